from gpt2lab.cli import main

raise SystemExit(main())

"""Files on disk: `atomic` (temporary name, then rename; the OS's refusals in one line), `dirlock` (one process per
output directory), `cache` (gpt2lab's download cache), `run_directory` (what lives where in a training run)."""

"""What every `gpt2lab bench` mode shares (gpt2lab/tools/bench/common.py): the ratios ours/theirs, each row against
its other dtypes, the table, and unknown dtypes refused before anything is measured. Made-up rows: nothing is timed."""

import pytest
import torch

from gpt2lab.errors import GPT2LabError
from gpt2lab.tools.bench.common import Row, add_dtype_ratios, format_table, report, widest

CPU = torch.device("cpu")


def rows():
    return [Row("gpt2lab", "float32", 1, 100.0, 10.0), Row("gpt2lab", "bfloat16", 1, 300.0, 3.0),
            Row("transformers", "float32", 1, 50.0, 20.0), Row("transformers", "bfloat16", 1, 200.0, 5.0),
            Row("gpt2lab", "float32", 8, 800.0, 10.0, peak_mem_mb=512.0), Row("transformers", "float32", 8, 400.0, 20.0)]


def test_ratios_are_ours_over_theirs_at_the_same_batch_in_the_same_dtype_or_against_their_float32():
    ratios = report("generate", CPU, rows(), {})["ratios"]
    assert ratios == {
        "gpt2lab float32 / transformers float32 (batch 1)": 2.0,
        "gpt2lab bfloat16 / transformers float32 (batch 1)": 6.0,
        "gpt2lab bfloat16 / transformers bfloat16 (batch 1)": 1.5,
        "gpt2lab float32 / transformers float32 (batch 8)": 2.0,
    }  # not ours in float32 against their bfloat16, nor across batch sizes
    prepare = report("prepare", CPU, [Row("gpt2lab", "-", 1, 30.0, 1.0), Row("tiktoken", "n/a", 1, 10.0, 3.0)], {})
    assert prepare["ratios"] == {"gpt2lab - / tiktoken n/a (batch 1)": 3.0}  # prepare: whatever the "dtypes"


def test_the_report_holds_every_row_and_the_table_prints_them_with_the_ratios():
    measured = rows()
    add_dtype_ratios(measured)
    assert measured[1].extra == {"vs_float32": 3.0}  # ours in bf16 against ours in fp32 at batch 1
    assert measured[3].extra == {"vs_float32": 4.0} and measured[4].extra == {}  # batch 8 has one dtype only
    result = report("generate", CPU, measured, {"params": 7})
    assert set(result) == {"mode", "environment", "details", "results", "ratios"}
    assert result["details"] == {"params": 7} and len(result["results"]) == 6
    assert result["results"][4]["peak_mem_mb"] == 512.0
    table = format_table(result).splitlines()
    assert table[0].startswith("gpt2lab bench generate on cpu (")
    assert len(table) == 2 + 6 + 4  # title, header, the rows, the ratios
    assert "ratio gpt2lab bfloat16 / transformers float32 (batch 1): 6.00x" in table
    assert any(line.split()[:3] == ["gpt2lab", "bfloat16", "1"] and "vs_float32=3" in line for line in table)


def test_the_widest_dtype_sizes_the_memory_check_and_an_unknown_one_is_refused():
    assert widest(["bfloat16", "float32"]) == 4 and widest(["float16"]) == 2
    with pytest.raises(GPT2LabError, match="unknown dtype 'float8'"):
        widest(["float32", "float8"])

"""The ``ghostmaps`` command asks PyTorch's CPU allocator for transparent huge pages before torch is imported
(``analysis.cli.main._huge_pages``), keeps a value the user set, and does nothing once torch is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.cli.main import thp_mode

SCRIPT = """
import os, sys
from analysis.cli.main import _huge_pages
{before}
_huge_pages()
print(os.environ.get("THP_MEM_ALLOC_ENABLE"))
import torch
x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
rollup = open("/proc/self/smaps_rollup").read() if os.path.exists("/proc/self/smaps_rollup") else ""
huge = [line for line in rollup.splitlines() if line.startswith("AnonHugePages:")]
print(int(huge[0].split()[1]) if huge else -1)
"""


def _run(before: str = "", env: dict[str, str] | None = None) -> tuple[str, int]:
    full = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"} | (env or {})
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(before=before)], capture_output=True, text=True,
                         env=full, check=True, cwd=Path(__file__).resolve().parents[2]).stdout.split()
    return out[0], int(out[1])


ENTRY = """
import os, sys
from analysis.cli import main  # what the console script imports
main(["layers", "tests.helpers:PlanNet", "--input-size", "32"])
import torch
x = torch.ones(64 << 20, dtype=torch.uint8)
rollup = open("/proc/self/smaps_rollup").read() if os.path.exists("/proc/self/smaps_rollup") else ""
huge = [line for line in rollup.splitlines() if line.startswith("AnonHugePages:")]
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), int(huge[0].split()[1]) if huge else -1)
"""


@pytest.mark.skipif(thp_mode() != "madvise", reason="needs transparent huge pages in madvise mode")
def test_the_command_itself_gets_huge_pages():
    # main() must set the variable before its subcommand modules import torch
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", ENTRY], capture_output=True, text=True, env=env, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out[-2] == "1" and int(out[-1]) >= 2048


def test_set_before_torch_and_kept_when_the_user_set_it():
    value, huge = _run()
    assert value == "1"
    if thp_mode() in ("madvise", "always"):
        assert huge >= 2048  # at least one 2 MiB page backs the 64 MiB tensor
    assert _run(env={"THP_MEM_ALLOC_ENABLE": "0"})[0] == "0"
    assert _run(before="import torch")[0] == "None"  # too late to matter: left alone


@pytest.mark.skipif(thp_mode() != "madvise", reason="needs transparent huge pages in madvise mode")
def test_without_it_torch_gets_no_huge_pages_in_madvise_mode():
    # the control: the same tensor without the variable is backed by 4 KiB pages only
    assert _run(before="import torch")[1] == 0


@pytest.mark.parametrize("files,want", [
    ({"sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n"}, "madvise"),
    ({"sys/kernel/mm/transparent_hugepage/enabled": "[always] madvise never\n"}, "always"),
    ({"sys/kernel/mm/transparent_hugepage/enabled": "always madvise [never]\n"}, "never"),
    ({"sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never\n",
      "sys/kernel/mm/transparent_hugepage/hugepages-2048kB/enabled": "always inherit madvise [never]\n"}, "off"),
    ({"sys/kernel/mm/transparent_hugepage/enabled": "[always] madvise never\n",
      "proc/self/status": "Name:\tpython\nTHP_enabled:\t0\n"}, "off"),
    ({"proc/self/status": "THP_enabled:\t1\n"}, "unknown"),
])
def test_thp_mode_reads_the_kernel_files(tmp_path, files, want):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert thp_mode(tmp_path) == want

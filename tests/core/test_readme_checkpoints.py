"""The README's checkpoint block runs as written (in an empty folder)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_checkpoint_layouts_block_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Checkpoints from training tools", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == [
        "lightning.ckpt",
        "ddp.pt",
        "compiled.pt",
        "ddp_compiled.pt",
        "ema.pt",
    ]
    assert printed[-1].split()[-1] == "AveragedModel"
    assert namespace["ema"].provenance["key"] == "state_dict_ema"
    assert list(namespace["in_memory"]) == list(namespace["weights"])

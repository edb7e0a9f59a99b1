"""The README's Python examples run against a real server (those that do not
loop forever), with the server's address in place of 127.0.0.1:9400."""

from __future__ import annotations

import re

from conftest import PKG


def test_readme_examples_run(server, capsys):
    text = (PKG / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 4
    ran = 0
    namespace: dict = {}
    for block in blocks:
        if "while True" in block:
            continue
        code = block.replace("127.0.0.1:9400", server.addr)
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
        ran += 1
    assert ran >= 3
    out = capsys.readouterr().out
    assert "RecordMetadata(topic='orders'" in out

"""zizmor (offline, auditor persona) finds nothing above informational in .github/.

Issue 20: cache poisoning, secrets outside environments and Dependabot without cooldown
were found this way; this test keeps them from coming back. A finding that must stay
would be justified in ``.github/zizmor.yml`` (none is, today).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, missing_tool


def test_zizmor_auditor_finds_nothing_above_informational() -> None:
    exe = shutil.which("zizmor", path=str(Path(sys.executable).parent))
    if exe is None:
        missing_tool("zizmor is not installed (requirements-dev.txt)")
    config = ROOT / ".github" / "zizmor.yml"
    args = [exe, "--offline", "--persona", "auditor", "--format", "json", "--no-progress"]
    if config.exists():
        args += ["--config", str(config)]
    proc = subprocess.run(
        [*args, str(ROOT / ".github")], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    findings = json.loads(proc.stdout or "[]")
    serious = [
        f"{f['ident']} ({f['determinations']['severity']}): {f['locations'][0]['symbolic']['key']}"
        for f in findings
        if f["determinations"]["severity"] != "Informational"
    ]
    assert not serious, "\n".join(serious)
    assert proc.returncode in (0, 11), proc.stderr  # 11: informational findings only

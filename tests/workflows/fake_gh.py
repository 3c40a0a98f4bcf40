"""A stand-in for ``gh api`` that answers the Git data API from a JSON state file.

The workflows' publish step runs against it in tests (no network, no token): every call
is logged to the state file (``FAKE_GH_STATE``), refs live there, objects get made-up
SHAs. Only the calls that step makes are understood; anything else exits non-zero.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = "repos/owner/imgclf/"


def main(args: list[str]) -> int:
    state_file = Path(os.environ["FAKE_GH_STATE"])
    state = json.loads(state_file.read_text())
    assert args[0] == "api", args
    method, fields, jq, endpoint, body = "GET", {}, None, "", None
    i = 1
    while i < len(args):
        arg = args[i]
        if arg == "-X":
            method, i = args[i + 1], i + 2
        elif arg in ("-f", "-F"):
            key, value = args[i + 1].split("=", 1)
            fields[key], i = value, i + 2
        elif arg == "--jq":
            jq, i = args[i + 1], i + 2
        elif arg == "--input":
            body = json.load(sys.stdin)
            method = "POST" if method == "GET" else method
            i += 2
        else:
            endpoint, i = arg, i + 1
    state["calls"].append({"method": method, "endpoint": endpoint, "fields": fields, "body": body})

    def answer(obj: Any) -> int:
        state_file.write_text(json.dumps(state))
        for part in (jq or ".").strip(".").split("."):
            obj = obj[part] if part else obj
        print(obj)
        return 0

    if not endpoint.startswith(REPO):
        return answer_error(state, state_file, f"unexpected repository: {endpoint}")
    path = endpoint[len(REPO) :]
    if path.startswith("git/ref/heads/"):
        ref = "refs/heads/" + path.removeprefix("git/ref/heads/")
        if ref not in state["refs"]:
            return answer_error(state, state_file, "Not Found (HTTP 404)")
        return answer({"object": {"sha": state["refs"][ref]}})
    if path.startswith("git/commits/"):
        return answer({"tree": {"sha": "t" * 40}})
    if path in ("git/blobs", "git/trees", "git/commits") and method == "POST":
        sha = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
        return answer({"sha": sha})
    if path == "git/refs" and method == "POST":
        state["refs"][fields["ref"]] = fields["sha"]
        return answer({})
    if path.startswith("git/refs/heads/") and method == "PATCH":
        state["refs"]["refs/heads/" + path.removeprefix("git/refs/heads/")] = fields["sha"]
        return answer({})
    return answer_error(state, state_file, f"unexpected call {method} {endpoint}")


def answer_error(state: dict[str, Any], state_file: Path, message: str) -> int:
    state_file.write_text(json.dumps(state))
    print(message, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

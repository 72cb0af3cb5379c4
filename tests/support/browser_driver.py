"""Tests' side of a Node driver of headless Chromium (sdk/js/test/e2e/driver.mjs,
tests/compat/analytics-next/driver.mjs): one JSON command per line in, one JSON answer per line out."""

import json
import subprocess
from pathlib import Path


class Browser:
    def __init__(self, folder: Path, script: str):
        self.process = subprocess.Popen(["node", script], cwd=folder, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)
        self.version = self._answer()

    def call(self, cmd: str, **fields):
        self.process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        return self._answer()

    def _answer(self):
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the browser driver exited with {self.process.wait(10)}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise AssertionError(answer["error"])
        return answer["result"]

    def eval(self, page: str, js: str):
        return self.call("eval", page=page, js=js)

    def close(self):
        try:
            self.call("quit")
        except AssertionError:
            pass
        self.process.wait(20)

"""A real Prometheus server (Debian's ``prometheus`` package) scraping a target,
started and stopped by the tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class PrometheusServer:
    def __init__(self, workdir: Path, port: int, target: str, scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.port = port
        self.target = target
        self.scrape_interval = scrape_interval
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "PrometheusServer":
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            f"  scrape_interval: {self.scrape_interval}\n"
            "scrape_configs:\n"
            "  - job_name: vllm-sparse\n"
            f"    static_configs: [{{targets: ['{self.target}']}}]\n"
        )
        self._log = (self.workdir / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"prometheus did not become ready; log: {self.workdir / 'prometheus.log'}")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self._log.close()

    def query(self, promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for_value(self, promql: str, expected: float, timeout: float = 30.0) -> float:
        """Polls until the query's single value equals ``expected`` (scrapes lag)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result:
                value = float(result[0]["value"][1])
                if value == expected:
                    return value
            time.sleep(0.5)
        raise AssertionError(f"{promql} = {value}, expected {expected}")

"""A real `gpt2lab serve` inside the test process: tiny models, uvicorn on a free loopback port in a thread.

The tests talk to it over HTTP exactly as clients do; being in-process lets a test also hold the engine
(`StepGate`) to create a situation deterministically (a request still generating when the next arrives)."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

from gpt2lab.serve.config import Limits, ServeConfig
from gpt2lab.serve.server import BackgroundServer


class LiveServer(BackgroundServer):
    def __init__(self, specs: list[str], limits: Limits | None = None, batch_size: int = 4):
        super().__init__(ServeConfig(models=specs, device="cpu", port=0, batch_size=batch_size,
                                     limits=limits or Limits()))
        self.limits = self.config.limits

    def post(self, path: str, body, timeout: float = 60) -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self._call(urllib.request.Request(self.url + path, data=data, method="POST",
                                                 headers={"Content-Type": "application/json"}), timeout)

    def get(self, path: str, timeout: float = 60) -> tuple[int, dict]:
        return self._call(urllib.request.Request(self.url + path), timeout)

    @staticmethod
    def _call(request, timeout) -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def wait_until_idle(self, timeout: float = 30) -> dict:
        """/health once no request is in flight and no sequence is running or waiting (bounded wait)."""
        return self._wait_for(lambda h: h["requests_in_flight"] == h["sequences_running"] == h["sequences_waiting"]
                              == 0, timeout)

    def wait_until_released(self, timeout: float = 30) -> dict:
        """/health once no request is in flight: the server has noticed every client that left, and cancelled its
        sequences (they leave their rows at the engine's next step, which a StepGate may still hold back)."""
        return self._wait_for(lambda h: h["requests_in_flight"] == 0, timeout)

    def _wait_for(self, condition, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            _, health = self.get("/health")
            if condition(health):
                return health
            assert time.monotonic() < deadline, f"the server is still busy: {health}"
            time.sleep(0.02)


class StepGate:
    """Makes an engine take a step only when the test allows one (`allow(n)`); `open()` lets it run freely."""

    def __init__(self, engine):
        self.engine, self.permits, self.free = engine, threading.Semaphore(0), False
        self.steps = 0
        real_step = engine.step

        def gated_step():
            if not self.free:
                self.permits.acquire()
            real_step()
            self.steps += 1

        engine.step = gated_step

    def allow(self, steps: int = 1) -> None:
        for _ in range(steps):
            self.permits.release()

    def open(self) -> None:
        self.free = True
        self.allow(1000)

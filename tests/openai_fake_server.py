"""A local server speaking POST /v1/embeddings, with injectable faults, for tests.

    python tests/openai_fake_server.py --port=8765 --flaky=0.3     # a flaky server to try embed.py against

Embeddings are deterministic: a unit vector drawn from a seed that hashes (model,
input text), so a test can recompute any row. Faults are taken from a queue
(`faults`, one per request, in arrival order) or drawn at random (`flaky`):
  "429"        rate limited, with Retry-After
  "500"        server error
  "hang"       sleeps past the client's timeout
  "truncated"  a 200 whose JSON body is cut short
  "wrong_rows" a 200 with one row missing
Every request's inputs are logged (`log`) so tests can count what was asked.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.server
import json
import random
import threading
import time

import numpy as np

DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072}


def fake_embedding(model: str, text: str, dim: int) -> np.ndarray:
  seed = int.from_bytes(hashlib.sha256(f"{model}\x00{text}".encode()).digest()[:8], "little")
  v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
  return v / np.linalg.norm(v)


class FakeOpenAI:

  def __init__(
      self,
      *,
      key: str = "sk-test",
      faults=(),
      flaky: float = 0.0,
      seed: int = 0,
      hang_s: float = 3.0,
      delay_s: float = 0.0,
      retry_after: str = "0.05",
      dims=None,
  ):
    self.key, self.faults, self.flaky = key, list(faults), flaky
    self.rng = random.Random(seed)
    self.hang_s, self.delay_s, self.retry_after = hang_s, delay_s, retry_after
    self.dims = {**DIMS, **(dims or {})}
    self.log: list[dict] = []  # {"inputs": [...], "fault": str|None}
    self.lock = threading.Lock()
    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
    self.server.daemon_threads = True
    self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

  @property
  def base_url(self) -> str:
    return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.server.shutdown()
    self.server.server_close()

  def requested_texts(self) -> list[str]:
    """Inputs of the requests that were answered successfully, in answer order."""
    with self.lock:
      return [t for r in self.log if r["fault"] is None for t in r["inputs"]]

  def _next_fault(self):
    with self.lock:
      if self.faults:
        return self.faults.pop(0)
      if self.flaky and self.rng.random() < self.flaky:
        return self.rng.choice(["429", "500", "hang", "truncated", "wrong_rows"])
    return None

  def _handler(self):
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):  # quiet
        pass

      def _send(self, code, body: bytes, headers=()):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
          self.send_header(k, v)
        self.end_headers()
        try:
          self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
          pass

      def _error(self, code, message, etype, ecode=None, headers=()):
        self._send(
            code,
            json.dumps(
                {"error": {"message": message, "type": etype, "param": None, "code": ecode}}
            ).encode(),
            headers,
        )

      def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(n) or b"{}")
        if self.path.rstrip("/") != "/v1/embeddings":
          return self._error(404, f"no route {self.path}", "invalid_request_error")
        if self.headers.get("Authorization") != f"Bearer {fake.key}":
          return self._error(
              401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
          )
        model = body.get("model")
        if model not in fake.dims:
          return self._error(
              404, f"The model `{model}` does not exist", "invalid_request_error", "model_not_found"
          )
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        if len(inputs) > 2048 or any(not isinstance(t, str) or not t for t in inputs):
          return self._error(400, "'$.input' is invalid", "invalid_request_error")
        fault = fake._next_fault()
        with fake.lock:
          fake.log.append({"inputs": inputs, "fault": fault})
        if fake.delay_s:
          time.sleep(fake.delay_s)
        if fault == "429":
          return self._error(
              429,
              "Rate limit reached",
              "requests",
              "rate_limit_exceeded",
              headers=[("Retry-After", fake.retry_after)],
          )
        if fault == "500":
          return self._error(500, "The server had an error", "server_error")
        if fault == "hang":
          time.sleep(fake.hang_s)
          return self._error(500, "too late", "server_error")
        dim = int(body.get("dimensions") or fake.dims[model])
        fmt = body.get("encoding_format", "float")
        rows = []
        for i, t in enumerate(inputs):
          v = fake_embedding(model, t, dim)
          emb = base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v.tolist()
          rows.append({"object": "embedding", "index": i, "embedding": emb})
        if fault == "wrong_rows":
          rows = rows[:-1]
        out = json.dumps(
            {
                "object": "list",
                "data": rows,
                "model": model,
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        ).encode()
        if fault == "truncated":
          out = out[: len(out) // 2]
        self._send(200, out)

    return Handler


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--port", type=int, default=8765)
  ap.add_argument("--key", default="sk-test")
  ap.add_argument("--flaky", type=float, default=0.0)
  args = ap.parse_args()
  fake = FakeOpenAI(key=args.key, flaky=args.flaky)
  fake.server.server_close()
  fake.server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), fake._handler())
  print(f"serving on {fake.base_url}", flush=True)
  fake.server.serve_forever()


if __name__ == "__main__":
  main()

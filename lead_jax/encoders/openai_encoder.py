"""OpenAI embeddings (text-embedding-3-small/large, or any name passed through).

    OPENAI_API_KEY=… python experiments/embed.py --dataset=wordnet --models=openai/text-embedding-3-small

Rows go through the store's resumable writer like any model: a block of rows is
cut into requests (≤ `max_inputs` inputs and ≤ `max_request_tokens` cl100k tokens
each), the requests run concurrently (`concurrency` threads), and the block is
written only when all its rows are back, in row order. A crash loses at most the
block in flight; a rerun requests only rows past the last committed block.

Inputs over `max_input_tokens` (8,191) cl100k tokens are cut at that many tokens,
and the count is reported. An empty input, which the API rejects, is sent as " ".

Retries: 429 (honouring Retry-After / retry-after-ms), 5xx, connection errors,
timeouts, unparseable bodies and responses with the wrong rows are retried with
exponential backoff and full jitter, at most `max_retries` times, then fail with
a clear error. 401/403 and unknown-model errors fail at once.

The key is read from OPENAI_API_KEY (or passed in) and never written anywhere:
not to meta.json, logs, or exception messages (every message we raise or log is
scrubbed of it). OPENAI_BASE_URL is honoured, as the client does.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import hashlib
import logging as pylogging
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from lead_jax.data.chunking import encoding
from lead_jax.encoders import registry

PREFIX = "openai/"
# Output widths by API name: the registered OpenAI models', plus the older ada-002.
KNOWN_DIMS = {n: registry.get(n).dim for n in registry.names("openai")} | {
    "text-embedding-ada-002": 1536
}


class OpenAIEmbeddingError(RuntimeError):
  """An embedding request failed for good (after retries, or at once for auth/model errors)."""


@dataclasses.dataclass(frozen=True)
class OpenAIConfig:
  """One OpenAI embedding model and how requests to it are cut, run and retried."""

  model: str  # API model name, without the "openai/" prefix
  dimensions: int | None = None
  max_inputs: int = 2048  # API limit per request
  max_request_tokens: int = 300_000  # API limit per request, cl100k tokens
  max_input_tokens: int = 8191  # API limit per input
  batch_size: int = 512  # inputs per request we aim for (≤ max_inputs)
  concurrency: int = 4
  max_retries: int = 8
  backoff_s: float = 1.0
  max_backoff_s: float = 60.0
  timeout_s: float = 60.0
  encoding_format: str = "base64"


def api_name(model: str) -> str:
  """The API model name of a lead_jax model name.

  Args:
    model: "openai/<name>" or a bare API name.

  Returns:
    The name without the "openai/" prefix.
  """
  return model[len(PREFIX) :] if model.startswith(PREFIX) else model


def redact(text: str, secret: str | None) -> str:
  """Replaces every occurrence of a secret.

  Args:
    text: a message.
    secret: the API key (None or empty: nothing to hide).

  Returns:
    `text` with the secret replaced by "[REDACTED]".
  """
  if secret:
    text = text.replace(secret, "[REDACTED]")
  return text


def safe_base_url(url: str | None) -> str | None:
  """The base URL without credentials or query, fit for metadata.

  Args:
    url: a base URL, or None.

  Returns:
    scheme://host[:port]/path, or None for no URL.
  """
  if not url:
    return None
  p = urllib.parse.urlsplit(url)
  return urllib.parse.urlunsplit(
      (p.scheme, p.hostname or "" if p.port is None else f"{p.hostname}:{p.port}", p.path, "", "")
  )


class _Retryable(Exception):

  def __init__(self, msg: str, retry_after: float | None = None):
    super().__init__(msg)
    self.retry_after = retry_after


def _retry_after(response) -> float | None:
  if response is None:
    return None
  h = response.headers
  for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
    v = h.get(name)
    if v is not None:
      try:
        return max(0.0, float(v) * scale)
      except ValueError:
        pass
  return None


class OpenAIEmbedder:
  """Embeds lists of texts through the official client; `embed(texts) -> [n, dim] float32`.

  Args:
    cfg: the model and request limits.
    api_key: the key (default `$OPENAI_API_KEY`); never logged or stored.
    base_url: the API base URL (default the client's: `$OPENAI_BASE_URL` or OpenAI).
    client: an `openai.OpenAI`-like client to use instead of making one (tests).
    sleep: how to wait between retries (tests pass a fake).

  Raises:
    OpenAIEmbeddingError: no client and no key.
  """

  def __init__(
      self,
      cfg: OpenAIConfig,
      *,
      api_key: str | None = None,
      base_url: str | None = None,
      client=None,
      sleep: Callable[[float], None] = time.sleep,
  ):
    import openai

    self.cfg = cfg
    self._key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    if client is None:
      if not self._key:
        raise OpenAIEmbeddingError(
            "no OpenAI API key: set OPENAI_API_KEY (or pass --openai_api_key)"
        )
      # Our own retry loop below; the client's would hide 429/5xx from us.
      client = openai.OpenAI(
          api_key=self._key, base_url=base_url, max_retries=0, timeout=cfg.timeout_s
      )
    self._client = client
    self.base_url = str(client.base_url)
    self._sleep = sleep
    self._enc = encoding()
    self.truncated = 0
    self.requests = 0
    self.retries = 0
    self._lock = threading.Lock()
    for name in ("openai", "httpx", "httpx2", "httpcore"):  # their debug logs would print requests
      pylogging.getLogger(name).setLevel(pylogging.WARNING)

  # ---------------------------------------------------------------- preparing inputs
  def prepare(self, texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """Cuts texts at `max_input_tokens` cl100k tokens and counts their tokens.

    Args:
      texts: the texts.

    Returns:
      (texts to send, an empty one as " "; token counts, at least 1).
    """
    toks = self._enc.encode_ordinary_batch(list(texts), num_threads=2)
    out, counts = [], []
    for text, t in zip(texts, toks):
      if len(t) > self.cfg.max_input_tokens:
        t = t[: self.cfg.max_input_tokens]
        text = self._enc.decode_bytes(t).decode("utf-8", errors="ignore")
        with self._lock:
          self.truncated += 1
      out.append(text if text else " ")
      counts.append(max(len(t), 1))
    return out, counts

  def plan(self, counts: Sequence[int]) -> list[tuple[int, int]]:
    """Cuts the inputs into requests within the per-request input and token limits.

    Args:
      counts: the token count of each input.

    Returns:
      Consecutive [start, stop) ranges covering every input.
    """
    cap = min(self.cfg.batch_size, self.cfg.max_inputs)
    spans, start, tokens = [], 0, 0
    for i, c in enumerate(counts):
      if i > start and (i - start >= cap or tokens + c > self.cfg.max_request_tokens):
        spans.append((start, i))
        start, tokens = i, 0
      tokens += c
    if counts:
      spans.append((start, len(counts)))
    return spans

  # ---------------------------------------------------------------- one request
  def _request(self, inputs: list[str]) -> np.ndarray:
    import openai

    kwargs = {"model": self.cfg.model, "input": inputs, "encoding_format": self.cfg.encoding_format}
    if self.cfg.dimensions:
      kwargs["dimensions"] = self.cfg.dimensions
    try:
      resp = self._client.embeddings.create(**kwargs)
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
      raise OpenAIEmbeddingError(
          f"OpenAI refused the credentials (HTTP {e.status_code}): " f"{redact(str(e), self._key)}"
      ) from None
    except openai.NotFoundError as e:
      raise OpenAIEmbeddingError(
          f"unknown model {self.cfg.model!r} (HTTP 404): " f"{redact(str(e), self._key)}"
      ) from None
    except openai.BadRequestError as e:
      msg = redact(str(e), self._key)
      if "model" in msg.lower():
        raise OpenAIEmbeddingError(f"model {self.cfg.model!r} rejected (HTTP 400): {msg}") from None
      raise OpenAIEmbeddingError(f"request rejected (HTTP 400): {msg}") from None
    except openai.RateLimitError as e:
      raise _Retryable("rate limited (429)", _retry_after(e.response)) from None
    except openai.APIStatusError as e:
      if e.status_code >= 500 or e.status_code in (408, 409):
        raise _Retryable(f"server error (HTTP {e.status_code})", _retry_after(e.response)) from None
      raise OpenAIEmbeddingError(f"HTTP {e.status_code}: {redact(str(e), self._key)}") from None
    except openai.APITimeoutError:
      raise _Retryable("request timed out") from None
    except openai.APIConnectionError as e:
      raise _Retryable(f"connection error ({type(e.__cause__ or e).__name__})") from None
    except (openai.APIResponseValidationError, ValueError, TypeError) as e:
      raise _Retryable(f"unparseable response ({type(e).__name__})") from None
    data = sorted(resp.data, key=lambda d: d.index)
    if len(data) != len(inputs) or [d.index for d in data] != list(range(len(inputs))):
      raise _Retryable(f"response has {len(data)} rows for {len(inputs)} inputs")
    rows = []
    for d in data:
      e = d.embedding
      rows.append(
          np.frombuffer(base64.b64decode(e), np.float32)
          if isinstance(e, str)
          else np.asarray(e, np.float32)
      )
    if len({r.shape for r in rows}) != 1 or rows[0].size == 0:
      raise _Retryable("response rows have differing or empty dims")
    out = np.stack(rows)
    if not np.isfinite(out).all():
      raise _Retryable("response has non-finite values")
    return out

  def request(self, inputs: list[str]) -> np.ndarray:
    """Runs one request with bounded retries (exponential backoff, full jitter, Retry-After).

    Args:
      inputs: the texts of the request.

    Returns:
      float32 [len(inputs), dim].

    Raises:
      OpenAIEmbeddingError: a non-retryable error, or retries exhausted.
    """
    for attempt in range(self.cfg.max_retries + 1):
      try:
        with self._lock:
          self.requests += 1
        return self._request(inputs)
      except _Retryable as e:
        if attempt == self.cfg.max_retries:
          raise OpenAIEmbeddingError(
              f"{self.cfg.model}: giving up after {attempt + 1} attempts; last error: {e}"
          ) from None
        delay = random.uniform(0, min(self.cfg.max_backoff_s, self.cfg.backoff_s * 2**attempt))
        if e.retry_after is not None:
          delay = max(delay, min(e.retry_after, self.cfg.max_backoff_s))
        with self._lock:
          self.retries += 1
        logging.warning(
            "%s: %s; retry %d/%d in %.2fs",
            self.cfg.model,
            e,
            attempt + 1,
            self.cfg.max_retries,
            delay,
        )
        self._sleep(delay)
    raise AssertionError("unreachable")

  # ---------------------------------------------------------------- many texts
  def embed(self, texts: Sequence[str]) -> np.ndarray:
    """Embeds texts, running the requests concurrently.

    Args:
      texts: the texts.

    Returns:
      float32 [len(texts), dim], in input order.

    Raises:
      OpenAIEmbeddingError: a request failed for good, or rows went missing.
    """
    inputs, counts = self.prepare(texts)
    spans = self.plan(counts)
    with cf.ThreadPoolExecutor(max_workers=max(1, self.cfg.concurrency)) as pool:
      parts = list(pool.map(lambda s: self.request(inputs[s[0] : s[1]]), spans))
    out = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
    if out.shape[0] != len(texts):
      raise OpenAIEmbeddingError(
          f"{self.cfg.model}: got {out.shape[0]} rows for {len(texts)} texts"
      )
    return out

  @property
  def dim(self) -> int:
    """The output width: configured, known, or probed with one request."""
    if self.cfg.dimensions:
      return self.cfg.dimensions
    if self.cfg.model in KNOWN_DIMS:
      return KNOWN_DIMS[self.cfg.model]
    if not hasattr(self, "_probed_dim"):  # an unknown model: one request tells
      self._probed_dim = int(self.request(["dimension probe"]).shape[1])
    return self._probed_dim

  def counters(self) -> dict:
    """Requests, retries and truncated inputs since the last call (then reset).

    Returns:
      `{"requests", "retries", "truncated_inputs"}` counts.
    """
    with self._lock:
      out = {"requests": self.requests, "retries": self.retries, "truncated_inputs": self.truncated}
      self.requests = self.retries = self.truncated = 0
    return out

  def meta(self) -> dict:
    """Metadata for meta.json: identity of the model, never the key.

    Returns:
      The fields the store records for this model.
    """
    ident = f"openai:{self.cfg.model}:{self.cfg.dimensions}"
    return {
        "source": "openai",
        "hf_id": None,
        "arch": "openai",
        "pooling": "api",
        "normalize": False,
        "weights_digest": hashlib.sha256(ident.encode()).hexdigest(),
        "openai_model": self.cfg.model,
        "dimensions": self.cfg.dimensions,
        "max_length": self.cfg.max_input_tokens,
        "openai_base_url": safe_base_url(self.base_url),
    }

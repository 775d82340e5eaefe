"""HTTP client for SGLang's native endpoints, and a bounded concurrent request loop.

Only ``/generate`` returns per-request acceptance (DESIGN.md section 5), so the OpenAI-style
endpoints are not used. Sampling parameters are always sent explicitly: at temperature > 0
``top_k`` is -1 (disabled) unless the user asks otherwise, never a silent greedy top_k = 1.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional


class RequestError(RuntimeError):
    """A request failed: connection lost, HTTP error (``status``) or an unparsable body."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


def check_sampling(temperature: float, max_new_tokens: int, top_k: int) -> None:
    """Refuse a negative temperature or no tokens; warn that top_k = 1 at temperature > 0 is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature > 0 and top_k == 1:
        warnings.warn(f"top_k=1 at temperature {temperature} is greedy decoding", stacklevel=3)


@dataclass(frozen=True)
class Sampling:
    temperature: float
    max_new_tokens: int
    top_p: float = 1.0
    top_k: int = -1
    seed: Optional[int] = None

    def params(self) -> dict[str, Any]:
        check_sampling(self.temperature, self.max_new_tokens, self.top_k)
        params: dict[str, Any] = {
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "top_k": int(self.top_k),
            "max_new_tokens": int(self.max_new_tokens),
        }
        if self.seed is not None:
            params["sampling_seed"] = int(self.seed)
        return params


class SGLangClient:
    def __init__(self, base_url: str, timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _request(self, method: str, path: str, payload: Any = None, timeout: Optional[float] = None) -> bytes:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()[:500].decode(errors="replace")
            raise RequestError(f"{method} {path}: HTTP {exc.code}: {body}", status=exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise RequestError(f"{method} {path}: {exc}") from exc

    def _json(self, method: str, path: str, payload: Any = None, timeout: Optional[float] = None) -> Any:
        raw = self._request(method, path, payload, timeout)
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RequestError(f"{method} {path}: response is not JSON ({exc}): {raw[:200]!r}") from exc

    def generate(self, text: str, sampling: Sampling) -> dict:
        out = self._json("POST", "/generate", {"text": text, "sampling_params": sampling.params(), "stream": False})
        if isinstance(out, list):  # batched form; we send one prompt
            out = out[0] if out else {}
        if not isinstance(out, dict) or "meta_info" not in out:
            raise RequestError(f"POST /generate: response has no meta_info: {str(out)[:200]}")
        return out

    def flush_cache(self, timeout_s: float = 120.0, retry_s: float = 0.5) -> int:
        """Reset the server's caches and acceptance metrics once it is idle; returns the attempts taken.

        SGLang flushes only when no request is running or waiting, else it answers HTTP 400 (the
        warm-up's last request may still be finishing).  ``/flush_cache?timeout=S`` makes SGLang 0.5.14 and
        0.5.23 wait up to S seconds for idle (``entrypoints/http_server.py`` ``flush_cache``,
        ``managers/scheduler_components/flush_wrapper.py``); a server that answers 400 anyway (one that
        ignores the parameter, or one still busy) is asked again every ``retry_s`` until ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        attempts = 0
        while True:
            attempts += 1
            left = max(1, int(deadline - time.monotonic()))
            try:
                self._request("POST", f"/flush_cache?timeout={left}", {}, timeout=left + 30)
                return attempts
            except RequestError as exc:
                if exc.status != 400 or time.monotonic() + retry_s >= deadline:
                    raise RequestError(f"{exc} (after {attempts} attempts over {timeout_s:.0f}s)", exc.status) from exc
            time.sleep(retry_s)

    def server_info(self) -> dict:
        try:
            return self._json("GET", "/server_info", timeout=30)
        except RequestError:
            return self._json("GET", "/get_server_info", timeout=30)


def run_bounded(
    items: Iterable[Any],
    work: Callable[[Any], Any],
    on_done: Callable[[Any, Any], None],
    *,
    concurrency: int,
    deadline_s: float,
) -> int:
    """Run ``work`` over ``items`` with at most ``concurrency`` in flight; ``on_done(item, result)`` is
    called in this thread as each finishes (so result files need no lock). Stops submitting when
    ``deadline_s`` has passed; the first exception cancels what has not started and propagates."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    items = list(items)
    end = time.monotonic() + deadline_s
    done_count = 0
    pool = ThreadPoolExecutor(max_workers=concurrency)
    pending: dict = {}
    queue = iter(items)
    ok = False
    try:
        while True:
            while len(pending) < concurrency and time.monotonic() < end:
                item = next(queue, _STOP)
                if item is _STOP:
                    break
                pending[pool.submit(work, item)] = item
            if not pending:
                break
            finished, _ = wait(
                list(pending), timeout=max(0.0, end - time.monotonic()) + 60, return_when=FIRST_COMPLETED
            )
            if not finished:
                raise TimeoutError(f"no request finished within the {deadline_s:.0f}s time budget")
            for fut in finished:
                item = pending.pop(fut)
                on_done(item, fut.result())
                done_count += 1
        ok = True
    finally:
        # on error or Ctrl-C do not wait for requests still in flight: the caller stops the server,
        # which ends them
        pool.shutdown(wait=ok, cancel_futures=not ok)
    return done_count


_STOP = object()

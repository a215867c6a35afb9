"""Generation through any OpenAI-compatible completions server: vLLM, SGLang, llama.cpp server.

``POST {server_url}/completions``, one request per (prompt, sample), ``server_concurrency`` in
flight so the server's continuous batching (and its own prefix cache) sees many at once.
Connection errors, time-outs, 429 and 5xx answers are retried with exponential back-off; any
other error stops the stage with the server's own message.

STaR generates with a new checkpoint every iteration. With ``server_command`` selftaught
starts a server for each checkpoint and stops it afterwards; without it the server at
``server_url`` must already serve the model asked for, which is checked against ``/models``
so that no iteration silently generates with the wrong model.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from selftaught.config import ConfigError, GenerationConfig, ModelConfig
from selftaught.generation.base import (Completion, Generator, SamplingParams, derive_seed, register,
                                         truncate_at_stop)

_RETRYABLE = {408, 429, 500, 502, 503, 504}


class ServerUnavailableError(ConfigError):
    """No usable server at generation.server_url (down, or serving another model)."""


class ServerRequestError(RuntimeError):
    """The server answered a request with an error that retrying will not fix."""


@register
class OpenAIServerGenerator(Generator):
    name = "openai"

    def __init__(self, model_path: str, model: ModelConfig, config: GenerationConfig):
        super().__init__(model_path, model, config)
        self.url = config.server_url.rstrip("/")
        self.process: subprocess.Popen | None = None
        if config.server_command:
            self._start_server(config.server_command)
        served = self._served_models()
        if model_path not in served:
            raise ServerUnavailableError(
                f"the server at {self.url} serves {', '.join(served) or 'no model'}, not {model_path} "
                "(the model this stage generates with); serve it, e.g. `vllm serve "
                f"{model_path}`, or set generation.server_command so selftaught starts a server "
                "for each iteration's checkpoint"
            )

    def generate(
        self, prompts: list[str], params: SamplingParams, desc: str = "generate",
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        start = time.perf_counter()
        jobs = [(i, k) for i in range(len(prompts)) for k in range(params.n)]
        results: list[list[Completion]] = [[] for _ in prompts]
        with ThreadPoolExecutor(self.config.server_concurrency) as pool, \
                tqdm(total=len(jobs), desc=desc, unit="seq", leave=False) as bar:
            futures = [pool.submit(self._complete, prompts[i], k, params,
                                   None if seeds is None else derive_seed(seeds[i], k))
                       for i, k in jobs]
            for (i, _), f in zip(jobs, futures):
                results[i].append(f.result())
                bar.update(1)
        self.stats.seconds += time.perf_counter() - start
        self.stats.tokens += sum(c.tokens for r in results for c in r)
        self.stats.prompts += len(prompts)
        return results

    def close(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    # --- one request --------------------------------------------------------------------------
    def _complete(self, prompt: str, sample: int, params: SamplingParams, seed: int | None = None) -> Completion:
        body = {
            "model": self.model_path, "prompt": prompt, "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "n": 1,
            # A seed per (prompt, sample): reproducible, and the same however prompts are batched.
            "seed": seed if seed is not None else zlib.crc32(f"{params.seed}:{sample}:{prompt}".encode()) & 0x7FFFFFFF,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        reply = self._post("/completions", body)
        try:
            choice = reply["choices"][0]
            tokens = int(reply["usage"]["completion_tokens"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ServerRequestError(f"{self.url}/completions answered without choices/usage: {reply!r:.300}") from None
        text, hit = truncate_at_stop(choice.get("text") or "", params.stop)
        # vLLM names the stop string in stop_reason (None: end of sequence); SGLang in matched_stop.
        matched = choice.get("stop_reason", choice.get("matched_stop"))
        if choice.get("finish_reason") == "length" and hit is None:
            return Completion(text, tokens, "length")
        if hit is not None or matched in params.stop:
            return Completion(text, tokens, "stop", hit or matched)
        if "stop_reason" in choice or "matched_stop" in choice:
            return Completion(text, tokens, "eos")
        return Completion(text, tokens, "stop")  # a server that does not say which stop

    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        return self._request(urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}, method="POST"))

    def _request(self, request: urllib.request.Request, retries: int | None = None) -> dict:
        retries = self.config.server_retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.config.server_timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code not in _RETRYABLE:
                    raise ServerRequestError(f"{request.full_url} answered {e.code}: {detail}") from None
                error = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, json.JSONDecodeError) as e:
                error = str(getattr(e, "reason", e))
            if self.process is not None and self.process.poll() is not None:
                break  # the server we started has died: retrying will not help
            if attempt < retries:
                time.sleep(min(0.25 * 2**attempt, 8.0))
        raise ServerUnavailableError(
            f"no answer from the OpenAI-compatible server at {self.url} after {retries + 1} "
            f"attempts ({error}); start one, e.g. `vllm serve {self.model_path} --port "
            f"{self._port()}`, point generation.server_url at it, or set generation.server_command"
        )

    def _served_models(self) -> list[str]:
        reply = self._request(urllib.request.Request(self.url + "/models"))
        return [m.get("id") for m in reply.get("data", []) if isinstance(m, dict)]

    # --- a server of our own, per checkpoint ---------------------------------------------------
    def _start_server(self, command: str) -> None:
        port = self._port()
        if "{port}" in command:
            port = _free_port()
            parts = urllib.parse.urlsplit(self.url)
            self.url = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))
        argv = [a.format(model=self.model_path, port=port) for a in shlex.split(command)]
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise ServerUnavailableError(f"cannot start generation.server_command {argv[0]!r}: {e}") from None
        deadline = time.monotonic() + 10 * self.config.server_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, self.process = self.process.returncode, None
                raise ServerUnavailableError(
                    f"generation.server_command exited with status {code} before serving "
                    f"{self.url}: {' '.join(argv)}")
            try:
                self._request(urllib.request.Request(self.url + "/models"), retries=0)
                return
            except ServerUnavailableError:
                time.sleep(0.5)
        self.close()
        raise ServerUnavailableError(f"the server started by generation.server_command did not answer at "
                                     f"{self.url} within {10 * self.config.server_timeout:.0f} s")

    def _port(self) -> int:
        parts = urllib.parse.urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""Generation through OpenAI-compatible completions servers: vLLM, SGLang, llama.cpp server.

``POST {url}/completions``, one request per (prompt, sample), ``concurrency`` in flight so the
servers' continuous batching (and their own prefix caches) see many at once. With several
``urls`` the requests are spread over them; a server that stops answering is dropped and its
requests go to the others. Time-outs, 429 and 5xx answers (and connection errors of the last
server) are retried with exponential back-off; any other error stops the stage with the
server's own message.

STaR generates with a new checkpoint every iteration. With ``server_command`` selftaught
starts ``servers`` servers for each checkpoint (one per GPU) and stops them afterwards; without
it the servers at ``urls`` must already serve the model asked for, which is checked against
``/models`` so that no iteration silently generates with the wrong model. A LoRA checkpoint is
loaded into running vLLM servers through their dynamic LoRA endpoint
(``/v1/load_lora_adapter``); servers started by ``server_command`` serve it merged.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from selftaught.config import ConfigError, GenerationConfig, ModelConfig, option
from selftaught.generation.base import (Completion, Generator, SamplingParams, derive_seed, register,
                                         truncate_at_stop)

_RETRYABLE = {408, 429, 500, 502, 503, 504}


class ServerUnavailableError(ConfigError):
    """No usable server at generation.openai.urls (down, or serving another model)."""


class ServerRequestError(RuntimeError):
    """The server answered a request with an error that retrying will not fix."""


@dataclass
class OpenAIOptions:
    urls: list[str] = option(
        "Base URLs of OpenAI-compatible completions servers, up to and including /v1; requests "
        "are spread over them, and a server that stops answering leaves its requests to the others.",
        default_factory=lambda: ["http://127.0.0.1:8000/v1"],
    )
    server_command: str | None = option(
        "Command that starts a server for a checkpoint, with {model}, {port} and {gpu} filled "
        "in, e.g. 'vllm serve {model} --port {port}'; selftaught starts `servers` of them for "
        "every iteration's model (the host of the first url, a free port each; with servers > 1 "
        "CUDA_VISIBLE_DEVICES={gpu}) and stops them after. None: use the servers at urls, which "
        "must serve the model being generated with.",
        default=None,
    )
    servers: int = option("Servers server_command starts, one per GPU.", default=1)
    gguf_converter: str | None = option(
        "llama.cpp's convert_hf_to_gguf.py (from its source tree; it needs `pip install gguf "
        "sentencepiece`), run on each checkpoint when server_command has {gguf}, e.g. "
        "'llama-server -m {gguf} --alias {model} --port {port} -np 64 -c 32768'; the conversion "
        "is part of the stage's time.",
        default=None,
    )
    gguf_type: str = option("Weights of the converted GGUF: f32, bf16, f16 or q8_0.", default="f32")
    concurrency: int = option("Requests in flight at once, over all servers.", default=32)
    retries: int = option("Retries of a request after a time-out, 429 or 5xx.", default=4)
    timeout: float = option(
        "Seconds to wait for one completion (and for a started server to come up, x10).", default=120.0)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("generation.openai.urls must name at least one server")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"generation.openai.urls: {url!r} must start with http:// or https://")
        for key in ("servers", "concurrency"):
            if getattr(self, key) < 1:
                raise ConfigError(f"generation.openai.{key} must be >= 1, got {getattr(self, key)}")
        if self.retries < 0:
            raise ConfigError(f"generation.openai.retries must be >= 0, got {self.retries}")
        if not self.timeout > 0:
            raise ConfigError(f"generation.openai.timeout must be > 0 seconds, got {self.timeout}")
        if self.gguf_type not in ("f32", "bf16", "f16", "q8_0"):
            raise ConfigError(f"generation.openai.gguf_type must be one of f32, bf16, f16, q8_0; got {self.gguf_type!r}")
        if self.server_command and "{gguf}" in self.server_command:
            if not self.gguf_converter:
                raise ConfigError(
                    "generation.openai.server_command has {gguf}: set generation.openai.gguf_converter to "
                    "llama.cpp's convert_hf_to_gguf.py (in its source tree)")
            if not Path(self.gguf_converter).expanduser().is_file():
                raise ConfigError(f"generation.openai.gguf_converter: file not found: {self.gguf_converter}")


@register
class OpenAIServerGenerator(Generator):
    name = "openai"
    Options = OpenAIOptions

    def __init__(self, model_path: str, model: ModelConfig, config: GenerationConfig):
        super().__init__(model_path, model, config)
        self.options = o = config.openai
        self.urls = [u.rstrip("/") for u in o.urls]
        self.url = self.urls[0]
        self.down: set[str] = set()
        self._lock = threading.Lock()
        self.processes: list[subprocess.Popen] = []
        self.served = model_path  # the model name requests ask for
        self.adapter: str | None = None
        self._gguf_dir: tempfile.TemporaryDirectory | None = None
        adapter = (Path(model_path) / "adapter_config.json").is_file()
        try:
            if o.server_command:
                self._start_servers(o.server_command, merged_checkpoint(model_path) if adapter else model_path)
            elif adapter:
                self._load_adapter(model_path)
            self._check_served()
        except BaseException:
            self.close()  # no server of ours outlives a failed start
            raise

    def _check_served(self) -> None:
        for url in self.urls:
            served = self._served_models(url)
            if self.served not in served:
                raise ServerUnavailableError(
                    f"the server at {url} serves {', '.join(served) or 'no model'}, not {self.served} "
                    "(the model this stage generates with); serve it, e.g. `vllm serve "
                    f"{self.served}`, or set generation.openai.server_command so selftaught starts a "
                    "server for each iteration's checkpoint"
                )

    @property
    def process(self) -> subprocess.Popen | None:
        return self.processes[0] if self.processes else None

    def generate(
        self, prompts: list[str], params: SamplingParams, desc: str = "generate",
        seeds: list[int] | None = None,
    ) -> list[list[Completion]]:
        start = time.perf_counter()
        jobs = [(i, k) for i in range(len(prompts)) for k in range(params.n)]
        results: list[list[Completion]] = [[] for _ in prompts]
        with ThreadPoolExecutor(self.options.concurrency) as pool, \
                tqdm(total=len(jobs), desc=desc, unit="seq", leave=False) as bar:
            futures = [pool.submit(self._complete, prompts[i], k, params, j,
                                   None if seeds is None else derive_seed(seeds[i], k))
                       for j, (i, k) in enumerate(jobs)]
            for (i, _), f in zip(jobs, futures):
                results[i].append(f.result())
                bar.update(1)
        self.stats.seconds += time.perf_counter() - start
        self.stats.tokens += sum(c.tokens for r in results for c in r)
        self.stats.prompts += len(prompts)
        return results

    def close(self) -> None:
        if self.adapter is not None:
            for url in self.urls:
                if url not in self.down:
                    try:
                        self._request(url + "/unload_lora_adapter", {"lora_name": self.adapter}, retries=0)
                    except (ServerUnavailableError, ServerRequestError):
                        pass  # a server that went away has nothing to unload
            self.adapter = None
        if self._gguf_dir is not None:
            self._gguf_dir.cleanup()
            self._gguf_dir = None
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes = []

    # --- one request --------------------------------------------------------------------------
    def _complete(self, prompt: str, sample: int, params: SamplingParams, job: int = 0,
                  seed: int | None = None) -> Completion:
        body = {
            "model": self.served, "prompt": prompt, "max_tokens": params.max_new_tokens,
            "temperature": params.temperature, "top_p": params.top_p, "n": 1,
            # A seed per (prompt, sample): reproducible, and the same however prompts are batched.
            "seed": seed if seed is not None else zlib.crc32(f"{params.seed}:{sample}:{prompt}".encode()) & 0x7FFFFFFF,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        reply = self._post("/completions", body, job)
        try:
            choice = reply["choices"][0]
            tokens = int(reply["usage"]["completion_tokens"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise ServerRequestError(f"/completions answered without choices/usage: {reply!r:.300}") from None
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

    def _post(self, path: str, body: dict, job: int = 0) -> dict:
        """``body`` to one of the servers (job-th in turn); a server that does not answer
        is dropped and the request goes to the next, so a stage outlives all but one server."""
        attempt = 0
        while True:
            alive = [u for u in self.urls if u not in self.down]
            if not alive:
                raise ServerUnavailableError(f"none of the servers {', '.join(self.urls)} answers")
            url = alive[(job + attempt) % len(alive)]
            try:
                return self._request(url + path, body, retries=self.options.retries if len(alive) == 1 else None)
            except _ServerDown:
                if len(alive) == 1:
                    raise ServerUnavailableError(self._down_message(url)) from None
                with self._lock:
                    if url not in self.down:
                        self.down.add(url)
                        tqdm.write(f"generation: {url} stopped answering; its requests go to the other "
                                   f"{len(alive) - 1} server(s)")
                attempt += 1

    def _request(self, url: str, body: dict | None = None, retries: int | None = None) -> dict:
        """GET (no body) or POST ``url``; a retryable error is retried ``retries`` times.

        ``retries=None``: one server among several; a connection error raises ``_ServerDown``
        at once (the caller tries another server), a 429/5xx answer is still retried here.
        """
        last = retries is not None
        retries = self.options.retries if retries is None else retries
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(retries + 1):
            request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.options.timeout) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code not in _RETRYABLE:
                    raise ServerRequestError(f"{url} answered {e.code}: {detail}") from None
                error = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, json.JSONDecodeError) as e:
                error = str(getattr(e, "reason", e))
                if not last:
                    raise _ServerDown(error) from None
            if any(p.poll() is not None for p in self.processes):
                break  # a server we started has died: retrying will not help
            if attempt < retries:
                time.sleep(min(0.25 * 2**attempt, 8.0))
        raise _ServerDown(error) if not last else ServerUnavailableError(
            f"no answer from the OpenAI-compatible server at {url.rsplit('/', 1)[0]} after "
            f"{attempt + 1} attempts ({error}); " + self._down_hint(url))

    def _down_message(self, url: str) -> str:
        return f"no answer from the OpenAI-compatible server at {url}; " + self._down_hint(url)

    def _down_hint(self, url: str) -> str:
        port = urllib.parse.urlsplit(url).port or 8000
        return (f"start one, e.g. `vllm serve {self.served} --port {port}`, point "
                "generation.openai.urls at it, or set generation.openai.server_command")

    def _served_models(self, url: str) -> list[str]:
        reply = self._request(url + "/models", retries=self.options.retries)
        return [m.get("id") for m in reply.get("data", []) if isinstance(m, dict)]

    def _load_adapter(self, path: str) -> None:
        """vLLM's dynamic LoRA loading (a server started with --enable-lora and
        VLLM_ALLOW_RUNTIME_LORA_UPDATING=True): each iteration's adapter on the running base."""
        name = f"selftaught-{zlib.crc32(str(Path(path).resolve()).encode()):08x}"
        for url in self.urls:
            try:
                self._request(url + "/load_lora_adapter", {"lora_name": name, "lora_path": str(path)},
                              retries=self.options.retries)
            except ServerRequestError as e:
                if "already" in str(e):  # loaded by an earlier stage of this iteration
                    continue
                raise ServerUnavailableError(
                    f"the server at {url} did not load the LoRA adapter {path} ({e}); start vLLM with "
                    "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or set "
                    "generation.openai.server_command so selftaught serves a merged checkpoint") from None
        self.adapter = self.served = name

    # --- servers of our own, per checkpoint ------------------------------------------------------
    def _start_servers(self, command: str, model: str) -> None:
        self.served = model
        gguf = self._convert_to_gguf(model) if "{gguf}" in command else ""
        host = urllib.parse.urlsplit(self.url)
        urls = []
        for gpu in range(self.options.servers):
            port = _free_port() if "{port}" in command else (host.port or 80)
            url = urllib.parse.urlunsplit(host._replace(netloc=f"{host.hostname}:{port}")).rstrip("/")
            argv = [a.format(model=model, port=port, gpu=gpu, gguf=gguf) for a in shlex.split(command)]
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)} if self.options.servers > 1 else None
            try:
                self.processes.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env))
            except OSError as e:
                self.close()
                raise ServerUnavailableError(f"cannot start generation.openai.server_command {argv[0]!r}: {e}") from None
            urls.append((url, argv))
        self.urls, self.url = [u for u, _ in urls], urls[0][0]
        deadline = time.monotonic() + 10 * self.options.timeout
        waiting = list(zip(urls, self.processes))
        while waiting and time.monotonic() < deadline:
            for item in list(waiting):
                (url, argv), process = item
                if process.poll() is not None:
                    code = process.returncode
                    self.close()
                    raise ServerUnavailableError(
                        f"generation.openai.server_command exited with status {code} before serving "
                        f"{url}: {' '.join(argv)}")
                try:
                    self._request(url + "/models", retries=0)
                    waiting.remove(item)
                except ServerUnavailableError:
                    pass
            time.sleep(0.5 if waiting else 0)
        if waiting:
            self.close()
            raise ServerUnavailableError(f"the server started by generation.openai.server_command did not "
                                         f"answer at {waiting[0][0][0]} within {10 * self.options.timeout:.0f} s")


    def _convert_to_gguf(self, model: str) -> str:
        """The checkpoint as one GGUF file, for llama.cpp's server, in a folder removed on close."""
        o = self.options
        self._gguf_dir = tempfile.TemporaryDirectory(prefix="selftaught-gguf-")
        out = Path(self._gguf_dir.name) / f"model-{o.gguf_type}.gguf"
        convert_to_gguf(model, o.gguf_converter, o.gguf_type, out)
        return str(out)


def convert_to_gguf(model: str, converter: str, outtype: str, out: Path) -> None:
    """``model`` (a Hugging Face checkpoint folder) written to ``out`` as GGUF by llama.cpp's own
    converter rather than one of ours: it knows every architecture llama.cpp runs and writes the
    tokenizer the way llama-server reads it."""
    converter_path = Path(converter).expanduser()
    # The converter imports gguf-py from its own source tree when no gguf package is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(converter_path.parent / "gguf-py"), os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, str(converter_path), model, "--outtype", outtype, "--outfile", str(out)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if p.returncode != 0 or not Path(out).is_file():
        tail = " ".join(p.stderr.strip().splitlines()[-1:]) or f"exit status {p.returncode}"
        raise ServerUnavailableError(f"generation.openai.gguf_converter could not convert {model} to GGUF: {tail}")


class _ServerDown(Exception):
    """One server of several did not answer; the request goes to another."""


def merged_checkpoint(adapter: str) -> str:
    """A LoRA adapter merged into its base, saved once beside it, for servers that take no adapters."""
    out = Path(adapter).with_name(Path(adapter).name + "-merged")
    if not (out / "config.json").exists():
        from transformers import AutoTokenizer

        from selftaught.models import load_causal_lm

        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        load_causal_lm(adapter).save_pretrained(partial)
        AutoTokenizer.from_pretrained(adapter).save_pretrained(partial)
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    return str(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

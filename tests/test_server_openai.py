"""The OpenAI-compatible server backend, against a small server speaking the protocol over loopback.

The server below answers ``GET /v1/models`` and ``POST /v1/completions`` as vLLM does
(``stop_reason`` included), generating with the tiny model through the transformers backend;
it can fail its first requests to exercise retries. Run as a script it is a standalone
server, which ``generation.openai.server_command`` starts in one test.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from selftaught.config import ConfigError, GenerationConfig, ModelConfig, from_dict
from selftaught.generation import SamplingParams, get_generator
from selftaught.generation.openai_server import ServerRequestError, ServerUnavailableError
from selftaught.tasks import get_task

TASK = get_task("addition", {"digits_min": 1, "digits_max": 2})


class CompletionsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: str, port: int = 0, fail_first: int = 0, drop_first: int = 0, die_after: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        self.model = model
        self.generator = get_generator(model, ModelConfig(dtype="float32"), GenerationConfig(batch_size=1))
        self.lock = threading.Lock()  # one generation at a time; requests still overlap in flight
        self.fail_first, self.drop_first, self.die_after = fail_first, drop_first, die_after
        self.requests = self.in_flight = self.max_in_flight = 0
        self.adapters: dict[str, object] = {}  # vLLM's dynamic LoRA loading, when lora=True
        self.lora = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        if not self.die_after:
            self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: CompletionsServer

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        if self.path != "/v1/models":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        names = [self.server.model, *self.server.adapters]
        self._send(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    def do_POST(self):
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            if not s.lora:  # as vLLM without VLLM_ALLOW_RUNTIME_LORA_UPDATING
                return self._send(404, {"detail": "Not Found"})
            if self.path.startswith("/v1/unload"):
                s.adapters.pop(body["lora_name"], None)
            else:  # the adapter merged into its base, as vLLM applies it
                s.adapters[body["lora_name"]] = get_generator(body["lora_path"], ModelConfig(dtype="float32"),
                                                              GenerationConfig(batch_size=1))
            return self._send(200, {})
        with s.lock:
            s.requests += 1
            n = s.requests
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
        try:
            if s.die_after and n > s.die_after:  # the server goes away mid-stage
                if n == s.die_after + 1:
                    threading.Thread(target=s.shutdown, daemon=True).start()
                    s.socket.close()  # no new connections
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if n <= s.drop_first:  # connection closed with no answer
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if n <= s.drop_first + s.fail_first:
                return self._send(503, {"error": {"message": "server busy, retry"}})
            generator = s.adapters.get(body.get("model"), s.generator if body.get("model") == s.model else None)
            if self.path != "/v1/completions" or generator is None:
                return self._send(404, {"error": {"message": f"model {body.get('model')!r} does not exist"}})
            if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] <= 0:
                return self._send(400, {"error": {"message": "max_tokens must be a positive integer"}})
            time.sleep(0.02)  # let concurrent requests overlap
            params = SamplingParams(max_new_tokens=body["max_tokens"], temperature=body.get("temperature", 1.0),
                                    top_p=body.get("top_p", 1.0), stop=tuple(body.get("stop") or ()),
                                    seed=body.get("seed") or 0)
            with s.lock:
                (c,), = generator.generate([body["prompt"]], params)
            finish = "length" if c.finish == "length" else "stop"
            self._send(200, {
                "id": f"cmpl-{n}", "object": "text_completion", "created": int(time.time()), "model": s.model,
                "choices": [{"index": 0, "text": c.text, "logprobs": None, "finish_reason": finish,
                             "stop_reason": c.stop}],
                "usage": {"prompt_tokens": 0, "completion_tokens": c.tokens, "total_tokens": c.tokens},
            })
        finally:
            with s.lock:
                s.in_flight -= 1

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _config(url: str | list[str], **kw) -> GenerationConfig:
    urls = url if isinstance(url, list) else [url]
    return from_dict(GenerationConfig, {"backend": "openai", "openai": {"urls": urls, "retries": 3, **kw}})


def _prompts(k: int = 6) -> list[str]:
    return [TASK.prompt(e) for e in TASK.load("test", k, seed=5)]


GREEDY = SamplingParams(max_new_tokens=20, stop=TASK.stop)


def test_same_completions_as_the_local_generator(tiny_model):
    local = get_generator(tiny_model, ModelConfig(dtype="float32"), GenerationConfig(batch_size=1))
    expected = local.generate(_prompts(), GREEDY)
    with CompletionsServer(tiny_model) as server:
        remote = get_generator(tiny_model, ModelConfig(), _config(server.url, concurrency=4))
        got = remote.generate(_prompts(), GREEDY)
    assert [(c.text, c.tokens, c.finish, c.stop) for (c,) in got] == \
           [(c.text, c.tokens, c.finish, c.stop) for (c,) in expected]
    assert server.max_in_flight >= 2  # requests really were concurrent
    assert remote.stats.tokens == sum(c.tokens for (c,) in got)


def test_requests_spread_over_servers_and_a_stopped_one_leaves_them_to_the_others(tiny_model):
    local = get_generator(tiny_model, ModelConfig(dtype="float32"), GenerationConfig(batch_size=1))
    expected = local.generate(_prompts(8), GREEDY)
    with CompletionsServer(tiny_model, die_after=2) as a, CompletionsServer(tiny_model) as b:
        g = get_generator(tiny_model, ModelConfig(), _config([a.url, b.url], concurrency=2))
        got = g.generate(_prompts(8), GREEDY)
    assert [(c.text, c.tokens) for (c,) in got] == [(c.text, c.tokens) for (c,) in expected]
    assert g.down == {a.url}  # a stopped mid-stage: dropped, its requests answered by b
    assert a.requests >= 3 and b.requests >= 8 - 2


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> str:
    """A LoRA checkpoint as the trainer writes it (adapter only), trained to differ from its base."""
    from selftaught.config import TrainingConfig
    from selftaught.training import TrainExample, get_trainer

    out = tmp_path_factory.mktemp("lora") / "checkpoint"
    examples = [TrainExample(p, " 1 + 1 = 2. The answer is 2.\n\n") for p in _prompts(4)]
    get_trainer(TrainingConfig(method="lora", lora_r=4, learning_rate=5e-2, warmup_steps=1, batch_size=4,
                               micro_batch_size=4, bf16=False)).train(tiny_model, examples, 6, out)
    return str(out)


def test_lora_adapter_is_loaded_into_a_running_server(tiny_model, adapter):
    expected = get_generator(adapter, ModelConfig(dtype="float32"), GenerationConfig(batch_size=1)).generate(
        _prompts(3), GREEDY)
    with CompletionsServer(tiny_model) as server:
        server.lora = True
        g = get_generator(adapter, ModelConfig(), _config(server.url))
        assert g.served in server.adapters  # requests name the adapter the server loaded
        got = g.generate(_prompts(3), GREEDY)
        g.close()
        assert not server.adapters  # unloaded after the stage
    assert [c.text for (c,) in got] == [c.text for (c,) in expected]
    with CompletionsServer(tiny_model) as server:  # a server that cannot load adapters
        with pytest.raises(ServerUnavailableError, match="--enable-lora.*server_command"):
            get_generator(adapter, ModelConfig(), _config(server.url))


def test_servers_started_for_a_lora_checkpoint_serve_it_merged(tiny_model, adapter):
    command = f"{sys.executable} {__file__} --model {{model}} --port {{port}}"
    g = get_generator(adapter, ModelConfig(), _config("http://127.0.0.1:1/v1", server_command=command,
                                                      timeout=30, servers=2))
    try:
        assert g.served == adapter + "-merged" and len(g.urls) == len(g.processes) == 2
        assert (Path(g.served) / "config.json").is_file() and not (Path(g.served) / "adapter_config.json").exists()
        expected = get_generator(adapter, ModelConfig(dtype="float32"), GenerationConfig(batch_size=1))
        assert [c.text for (c,) in g.generate(_prompts(2), GREEDY)] == \
               [c.text for (c,) in expected.generate(_prompts(2), GREEDY)]
    finally:
        g.close()


def test_samples_per_prompt_are_distinct_requests(tiny_model):
    with CompletionsServer(tiny_model) as server:
        g = get_generator(tiny_model, ModelConfig(), _config(server.url))
        params = SamplingParams(max_new_tokens=12, temperature=1.0, n=3, stop=TASK.stop, seed=1)
        a, b = g.generate(_prompts(2), params), g.generate(_prompts(2), params)
    assert [len(x) for x in a] == [3, 3] and server.requests == 12
    assert [[c.text for c in x] for x in a] == [[c.text for c in x] for x in b]  # seeded


def test_retries_after_dropped_connections_and_503(tiny_model):
    with CompletionsServer(tiny_model, fail_first=2, drop_first=1) as server:
        g = get_generator(tiny_model, ModelConfig(), _config(server.url, concurrency=1))
        got = g.generate(_prompts(2), GREEDY)
    assert server.requests == 2 + 3  # two answers after three failed attempts
    assert all(c.text for (c,) in got)


def test_gives_up_with_a_clear_error_when_failures_persist(tiny_model):
    with CompletionsServer(tiny_model, fail_first=100) as server:
        g = get_generator(tiny_model, ModelConfig(), _config(server.url, retries=2))
        with pytest.raises(ServerUnavailableError, match=r"after 3 attempts \(HTTP 503"):
            g.generate(_prompts(1), GREEDY)


def test_client_errors_are_not_retried(tiny_model):
    with CompletionsServer(tiny_model) as server:
        g = get_generator(tiny_model, ModelConfig(), _config(server.url))
        with pytest.raises(ServerRequestError, match="400: .*max_tokens"):
            g.generate(_prompts(1), SamplingParams(max_new_tokens=0))
    assert server.requests == 1


def test_server_down_is_a_clear_error():
    with _closed_port() as port:
        start = time.perf_counter()
        with pytest.raises(ServerUnavailableError, match=rf"127.0.0.1:{port}.*vllm serve"):
            get_generator("some/model", ModelConfig(), _config(f"http://127.0.0.1:{port}/v1", retries=1))
        assert time.perf_counter() - start < 5


def test_wrong_model_on_the_server_is_refused(tiny_model, random_model):
    with CompletionsServer(tiny_model) as server:
        with pytest.raises(ServerUnavailableError, match="server_command"):
            get_generator(random_model, ModelConfig(), _config(server.url))


def test_server_command_starts_and_stops_a_server_per_model(tiny_model):
    command = f"{sys.executable} {__file__} --model {{model}} --port {{port}}"
    g = get_generator(tiny_model, ModelConfig(), _config("http://127.0.0.1:1/v1", server_command=command,
                                                          timeout=30))
    process = g.process
    assert process.poll() is None and not g.url.endswith(":1/v1")
    (c,), = g.generate(_prompts(1), GREEDY)
    assert c.tokens > 0
    g.close()
    assert process.poll() is not None  # stopped


def test_server_command_with_gguf_converts_each_checkpoint_first(tiny_model, tmp_path):
    """{gguf}: the checkpoint goes through gguf_converter (a stand-in here: llama.cpp's takes the
    same arguments) and the server gets the file; the file is gone once the generator closes."""
    converter = tmp_path / "convert_hf_to_gguf.py"
    converter.write_text(
        "import argparse, pathlib\n"
        "p = argparse.ArgumentParser(); p.add_argument('model'); p.add_argument('--outtype');"
        " p.add_argument('--outfile')\n"
        "a = p.parse_args(); pathlib.Path(a.outfile).write_text(a.outtype + ' ' + a.model)\n")
    command = f"{sys.executable} {__file__} --gguf {{gguf}} --port {{port}}"
    g = get_generator(tiny_model, ModelConfig(), _config(
        "http://127.0.0.1:1/v1", server_command=command, timeout=30, gguf_converter=str(converter), gguf_type="bf16"))
    gguf = Path(g.processes[0].args[g.processes[0].args.index("--gguf") + 1])
    assert gguf.read_text() == f"bf16 {tiny_model}" and gguf.name == "model-bf16.gguf"
    (c,), = g.generate(_prompts(1), GREEDY)
    assert c.tokens > 0
    g.close()
    assert not gguf.exists()
    converter.write_text("raise SystemExit('no such architecture')\n")
    with pytest.raises(ServerUnavailableError, match="could not convert .* no such architecture"):
        get_generator(tiny_model, ModelConfig(), _config(
            "http://127.0.0.1:1/v1", server_command=command, timeout=30, gguf_converter=str(converter)))
    with pytest.raises(ConfigError, match="set generation.openai.gguf_converter"):
        _config("http://127.0.0.1:1/v1", server_command=command)


def test_failing_server_command_is_a_clear_error(tiny_model):
    with pytest.raises(ServerUnavailableError, match="exited with status"):
        get_generator(tiny_model, ModelConfig(),
                      _config("http://127.0.0.1:8000/v1", server_command=f"{sys.executable} -c 'raise SystemExit(3)'"))


class _closed_port:
    """A loopback port with nothing listening on it."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":  # a standalone server, for generation.openai.server_command
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--gguf", help="a stand-in GGUF: 'TYPE MODEL_PATH', as the stand-in converter writes")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    model = args.model or Path(args.gguf).read_text().split(" ", 1)[1]  # served by its path, as --alias does
    CompletionsServer(model, args.port).serve_forever()

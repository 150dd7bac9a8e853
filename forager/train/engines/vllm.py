"""vLLM samplers for the trainer: OpenAI-compatible servers whose weights the learner replaces while episodes run.

    pip install 'forager[vllm]'     # then rollout.backend: vllm

`VLLMEngine(model)` starts `engines` servers (`vllm serve`, tensor parallel `tensor_parallel`, each on its own
GPUs, with `VLLM_SERVER_DEV_MODE=1` and Forager's worker extension, `engines.vllm_worker`), or attaches to
servers already running (`base_urls`: a compose service, a Ray actor, a Slurm job). Episodes sample through
the `openai` policy's token-in-token-out path (`/v1/completions` with the exact prompt ids), one policy per
server, an episode staying on one server so its prefix cache keeps the conversation.

A weight update, while episodes are in flight:
1. `POST /pause?mode=keep` on every server (vLLM freezes its requests; a version without the endpoint
   still swaps weights between two engine steps, since `collective_rpc` runs there);
2. `POST /collective_rpc forager_receive` on every server, while this process broadcasts the weights
   in flat buckets through `train.sync.WeightBroadcaster` to a group of itself (rank 0) and every worker
   of every server (NCCL on GPUs, gloo on CPUs), which they load with vLLM's own `load_weights`;
3. `POST /resume`, and the next request of every episode names the new policy version.
`sync="disk"` writes a safetensors file instead (where no process group can be formed: the servers must
read the path); `sync="ipc"` hands CUDA IPC handles to servers on the learner's own GPUs (colocated).

A server that does not answer, exits, is slow, was started without the extension, or holds another policy
version than the run (a server left over from another run) is an `EngineError` naming the server and
what to do; the run's loop stops on it, keeping what it finished, and the same command resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx

from forager.core import Message, PolicyOutput, Task
from forager.train.engines import EngineError, NamedTensors
from forager.train.sync import DEFAULT_BUCKET_BYTES, SyncError, SyncStats, WeightBroadcaster

EXTENSION = "forager.train.engines.vllm_worker:WeightSyncExtension"
SERVED_NAME = "forager-policy"
LOG_TAIL_CHARS = 3000
SyncMethod = Literal["auto", "nccl", "gloo", "disk", "ipc"]


def vllm_serve_command(model: str, port: int | str, *, tensor_parallel: int = 1, gpu_memory_utilization: float = 0.9,
                       max_model_len: int | None = None, seed: int = 0, served_model_name: str = SERVED_NAME,
                       host: str = "127.0.0.1", extra_args: Sequence[str] = ()) -> list[str]:
    """The `vllm serve` command line of one sampler (vLLM's console script, through this Python)."""
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
               "--port", str(port), "--served-model-name", served_model_name, "--tensor-parallel-size",
               str(tensor_parallel), "--gpu-memory-utilization", str(gpu_memory_utilization), "--seed", str(seed),
               "--worker-extension-cls", EXTENSION, "--enable-prefix-caching"]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    return [*command, *extra_args]


class ServerProcess:
    """One server this engine started: its own session (a Ctrl-C reaches the trainer, which stops it), a log file."""

    def __init__(self, command: list[str], base_url: str, env: dict[str, str]) -> None:
        self.base_url, self.command = base_url, command
        self.log = tempfile.NamedTemporaryFile(prefix="forager-vllm-", suffix=".log", delete=False)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise EngineError(f"the vLLM server for {self.base_url} exited with status {code}{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            text = Path(self.log.name).read_text(errors="replace")[-LOG_TAIL_CHARS:].strip()
        except OSError:
            return ""
        return f"; its log ({self.log.name}) ends:\n{text}" if text else ""

    def stop(self, wait_s: float = 30.0) -> None:
        """SIGTERM to the server's process group (vLLM's workers are its children), SIGKILL after `wait_s`."""
        if self.process.poll() is None:
            for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.process.pid, sig)
                    self.process.wait(timeout=wait)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        self.log.close()
        if self.process.returncode in (0, -signal.SIGTERM):
            Path(self.log.name).unlink(missing_ok=True)  # kept after a failure: the error names it


class ServerActor:
    """A Ray actor holding one server's GPUs: it starts the server on its node (listening on the node's address),
    reports when it exited, and stops it; the server's process group goes with the actor."""

    def __init__(self) -> None:
        self.server: ServerProcess | None = None

    def start(self, command: list[str], extra: list[str], env: dict[str, str], port: int) -> str:
        import ray

        host = ray.util.get_node_ip_address()
        port = _free_port(port, host="0.0.0.0")
        url = f"http://{host}:{port}/v1"
        final = [part.format(port=port, host="0.0.0.0") for part in command] + extra
        self.server = ServerProcess(final, url, {**os.environ, **env})  # CUDA_VISIBLE_DEVICES: Ray's, for this actor
        return url

    def poll(self) -> str | None:
        try:
            self.server.check_alive() if self.server is not None else None
        except EngineError as err:
            return str(err)
        return None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class VLLMEngine:
    """Sampling servers the learner updates in place; see the module docstring."""

    name = "vllm"

    def __init__(self, model: str, *, base_urls: Sequence[str] = (), engines: int = 1, tensor_parallel: int = 1,
                 gpu_memory_utilization: float = 0.9, max_context: int | None = None, port: int = 8000,
                 gpus: Sequence[int] | None = None, sync: SyncMethod = "auto", sync_host: str | None = None,
                 sync_dir: str | None = None, bucket_bytes: int = DEFAULT_BUCKET_BYTES, policy_version: int = 0,
                 served_model_name: str = SERVED_NAME, tokenizer: str | None = None,
                 server_command: Sequence[str] | None = None, server_args: Sequence[str] = (),
                 placement: Literal["auto", "local", "ray"] = "auto",
                 start_timeout_s: float = 1800.0, request_timeout_s: float = 600.0, sync_timeout_s: float = 1800.0,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int = 0, max_tokens: int | None = None,
                 max_retries: int = 4) -> None:
        """`model`: what the servers serve (a directory or hub id; its tokenizer renders the prompts); `base_urls`:
        servers already running (`http://host:8000/v1`), else `engines` are started here. `server_command`: a
        command template instead of `vllm serve` ({model}, {port}, {served_model_name}, {max_model_len}, {seed}),
        for another server with the same endpoints (the tests use `forager.testing.openai_server`; {host} is the
        address to listen on). `placement`: `ray` starts each server in a Ray actor holding `tensor_parallel` GPUs
        wherever the cluster has them (listening on its node's address); `auto` does so when this process runs
        inside Ray (a learner rank of `forager.train.ray_learner`), else starts them here."""
        from forager.policies.openai import OpenAIPolicy

        self.model, self.served_model_name = str(model), served_model_name
        self._version = policy_version
        self.closed = False
        self.last_sync: SyncStats | None = None
        self.processes: list[ServerProcess] = []
        self.actors: list[Any] = []
        self.placement = _placement(placement)
        self.sync_method = _sync_method(sync)
        self.bucket_bytes, self.sync_timeout_s = bucket_bytes, sync_timeout_s
        self._sync_host = sync_host
        self.sync_dir = Path(sync_dir) if sync_dir else None
        self._broadcaster: WeightBroadcaster | None = None
        self._pause_supported = True
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=httpx.Timeout(request_timeout_s, connect=10.0))
        try:
            if base_urls:
                self.base_urls = [_normalize(url) for url in base_urls]
            else:
                self.base_urls = self._start(engines, tensor_parallel, gpu_memory_utilization, max_context, port,
                                             gpus, seed, server_command, server_args)
            self._wait_ready(start_timeout_s)
            self.workers = self._check_servers(policy_version)
            sampling = {"temperature": temperature, "top_p": top_p, "seed": seed, "max_tokens": max_tokens}
            self.policies = [OpenAIPolicy(url, model=served_model_name, api="completions",
                                          tokenizer=tokenizer or self.model, max_context=max_context,
                                          timeout=request_timeout_s, max_retries=max_retries,
                                          policy_version=policy_version, **sampling) for url in self.base_urls]
            shared = self.policies[0].chat_tokens()  # one tokenizer for every server's policy
            for policy in self.policies[1:]:
                policy._chat_tokens = shared
        except BaseException:
            self.close()
            raise

    # -- the Engine seam -----------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self._version

    def act(self, messages: list[Message], *, task: Task | None = None, prefix_token_ids: list[int] | None = None,
            max_tokens: int | None = None, tools: list[dict[str, Any]] | None = None) -> PolicyOutput:
        """The next message from the server this episode is pinned to (by its opening messages)."""
        self._check_open()
        policy = self.policies[self._server_for(messages)]
        return policy.act(messages, task=task, prefix_token_ids=prefix_token_ids, max_tokens=max_tokens, tools=tools)

    def update_weights(self, weights: NamedTensors, policy_version: int) -> None:
        """Pause every server, load the new weights into each of its workers, resume; raises EngineError on failure."""
        self._check_open()
        with self._lock:
            started = time.monotonic()
            paused = self._pause()
            try:
                if self.sync_method == "disk":
                    self._sync_by_disk(weights, policy_version)
                elif self.sync_method == "ipc":
                    self._sync_by_ipc(weights, policy_version)
                else:
                    self._sync_by_broadcast(weights, policy_version)
            finally:
                self._resume(paused)
            for policy in self.policies:
                policy.policy_version = policy_version
            self._version = policy_version
            if self.sync_method in ("disk", "ipc"):
                self.last_sync = SyncStats(policy_version, time.monotonic() - started, 0.0, 0, 0, 0)

    def close(self) -> None:
        """Close the weight group and stop the servers this engine started (not attached ones); idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._broadcaster is not None:
            self._broadcaster.close(wait_s=0.0)
        for policy in getattr(self, "policies", []):
            policy.close()
        with ThreadPoolExecutor(max(1, len(self.processes))) as pool:
            list(pool.map(lambda server: server.stop(), self.processes))
        if self.actors:
            import ray

            for actor in self.actors:
                try:
                    ray.get(actor.stop.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - a dead actor took its server with it (the process group)
                    pass
                ray.kill(actor)
        self._http.close()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "servers": self.base_urls, "sync": self.sync_method}

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inspection ----------------------------------------------------------------------------
    def status(self) -> list[list[dict[str, Any]]]:
        """Each server's workers' `forager_state`: version, syncs, rank, last error."""
        return [self._rpc(url, "forager_state") for url in self.base_urls]

    def checksums(self, server: int = 0) -> dict[str, str]:
        """Digests of the first worker's weights by the server's names (`train.sync.tensor_checksums`)."""
        return self._rpc(self.base_urls[server], "forager_checksums")[0]

    # -- starting and checking servers -----------------------------------------------------------
    def _start(self, engines: int, tensor_parallel: int, memory: float, max_context: int | None, port: int,
               gpus: Sequence[int] | None, seed: int, template: Sequence[str] | None,
               extra: Sequence[str]) -> list[str]:
        if template is None and not _has_vllm():
            raise EngineError("rollout.backend vllm starts vLLM servers, and vLLM is not installed here: "
                              "pip install 'forager[vllm]', or give rollout.servers of servers running elsewhere")
        devices = list(gpus) if gpus is not None else _visible_gpus()
        if self.placement == "ray":
            devices = [0] if template is None else []  # Ray gives each actor its GPUs: ask for them, not ids
        elif template is None and len(devices) < engines * tensor_parallel:
            raise EngineError(f"{engines} vLLM engines of tensor parallel {tensor_parallel} need "
                              f"{engines * tensor_parallel} GPUs; this machine shows {len(devices)}. Lower "
                              "rollout.engines/tensor_parallel, or give rollout.servers of servers running elsewhere")
        urls = []
        for index in range(engines):
            if template is None:
                command = vllm_serve_command(_braced(self.model), "{port}", tensor_parallel=tensor_parallel,
                                             gpu_memory_utilization=memory, max_model_len=max_context,
                                             seed=seed + index, served_model_name=_braced(self.served_model_name),
                                             host="{host}")
            else:
                fields = {"model": self.model, "served_model_name": self.served_model_name,
                          "max_model_len": max_context or "", "seed": seed + index}
                command = [part.format(**fields, port="{port}", host="{host}") for part in template]
            env = {"VLLM_SERVER_DEV_MODE": "1", "TORCH_CPP_LOG_LEVEL": "ERROR",
                   "PYTHONPATH": os.pathsep.join(p for p in (_source_root(), os.environ.get("PYTHONPATH")) if p)}
            if self.placement == "ray":
                urls.append(self._start_actor(command, list(extra), env, port + index, tensor_parallel if devices else 0))
                continue
            if devices:
                mine = devices[index * tensor_parallel:(index + 1) * tensor_parallel]
                env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, mine))
            server_port = _free_port(port + index)
            url = f"http://127.0.0.1:{server_port}/v1"
            final = [part.format(port=server_port, host="127.0.0.1") for part in command] + list(extra)
            self.processes.append(ServerProcess(final, url, {**os.environ, **env}))
            urls.append(url)
        return urls

    def _start_actor(self, command: list[str], extra: list[str], env: dict[str, str], port: int, gpus: int) -> str:
        """One server in a Ray actor that holds its GPUs, on whichever node has them; its URL."""
        import ray

        actor = ray.remote(num_cpus=1, num_gpus=gpus)(ServerActor).remote()
        self.actors.append(actor)
        try:
            return ray.get(actor.start.remote(command, extra, env, port), timeout=600)
        except Exception as err:  # noqa: BLE001 - Ray's errors name the actor; ours say what to do
            raise EngineError(f"a vLLM server could not start on the Ray cluster ({type(err).__name__}: {err}); "
                              f"it asked for {gpus} GPU(s) and 1 CPU") from err

    def _wait_ready(self, timeout_s: float) -> None:
        """Every server answers `/health`; a started one that exits, or any that stays silent, is an EngineError."""
        deadline = time.monotonic() + timeout_s
        waiting = list(self.base_urls)
        while waiting:
            if self.actors:
                self._check_alive()
            for url in list(waiting):
                process = next((p for p in self.processes if p.base_url == url), None)
                if process is not None:
                    process.check_alive()
                try:
                    if self._http.get(_root(url) + "/health", timeout=5.0).status_code == 200:
                        waiting.remove(url)
                        continue
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    tail = process.log_tail() if process is not None else ""
                    raise EngineError(f"the vLLM server at {url} did not answer /health within {timeout_s:.0f} s: "
                                      f"check that it is up and reachable from here{tail}")
            if waiting:
                time.sleep(0.5)

    def _check_servers(self, version: int) -> list[int]:
        """Workers per server. Every server must run Forager's extension; one that took weight updates must hold this
        run's `version` (one at another version serves another run's weights). A server that never took one holds
        the model it loaded, which the trainer names `version` or syncs before the first episode (a resumed run)."""
        workers = []
        for url in self.base_urls:
            states = self._rpc(url, "forager_state")
            updated = [state for state in states if int(state.get("syncs", 0))]
            held = sorted({int(state.get("version", -1)) for state in updated})
            if updated and held != [version]:
                raise EngineError(
                    f"the vLLM server at {url} holds policy version(s) {held}, but this run is at version {version}: "
                    "it serves another run's weights. Restart it (it loads the model again), or point the run at "
                    "servers of its own")
            workers.append(len(states))
        return workers

    # -- the weight update ---------------------------------------------------------------------
    def _sync_by_broadcast(self, weights: NamedTensors, version: int) -> None:
        broadcaster = self._group()
        with ThreadPoolExecutor(len(self.base_urls)) as pool:
            receiving = [pool.submit(self._rpc, url, "forager_receive", timeout=self.sync_timeout_s)
                         for url in self.base_urls]
            try:
                self.last_sync = broadcaster.broadcast(weights, version)
            except SyncError as err:
                self._check_alive()
                raise EngineError(f"the weight sync to the vLLM servers failed: {err}") from err
            finally:
                results = [future.exception() or future.result() for future in receiving]
        failures = [f"{url}: {result}" for url, result in zip(self.base_urls, results)
                    if isinstance(result, BaseException) or any("error" in r for r in result)]
        if failures:
            raise EngineError(f"version {version} did not load on every server: {'; '.join(failures)}")

    def _group(self) -> WeightBroadcaster:
        """The weight group of this process and every server's workers, formed on the first update."""
        if self._broadcaster is not None:
            return self._broadcaster
        backend = "nccl" if self.sync_method == "nccl" else "gloo"
        broadcaster = WeightBroadcaster(sum(self.workers), backend=backend, host=self.sync_host,
                                        bucket_bytes=self.bucket_bytes, timeout_s=self.sync_timeout_s)
        offsets = [1 + sum(self.workers[:i]) for i in range(len(self.workers))]
        with ThreadPoolExecutor(len(self.base_urls)) as pool:
            joining = [pool.submit(self._rpc, url, "forager_join", {"address": broadcaster.address.to_dict(),
                                                                    "rank_offset": offset},
                                   timeout=self.sync_timeout_s)
                       for url, offset in zip(self.base_urls, offsets)]
            try:
                broadcaster.connect(check=lambda: self._raise_failed(joining))
            except SyncError as err:
                broadcaster.close(wait_s=0.0)
                raise EngineError(f"the vLLM servers did not join the weight group at {self.sync_host}:"
                                  f"{broadcaster.address.port}: {err}; they must reach this host (sync_host=)") from err
            for future in joining:
                future.result()
        self._broadcaster = broadcaster
        return broadcaster

    @property
    def sync_host(self) -> str:
        """Where the servers' workers reach this process's weight group: the address given, else loopback when every
        server is on this machine's loopback, else this node's address (Ray's, or the host name's)."""
        if self._sync_host:
            return self._sync_host
        if all(httpx.URL(url).host in ("127.0.0.1", "localhost") for url in self.base_urls):
            return "127.0.0.1"
        try:
            import ray

            if ray.is_initialized():
                return ray.util.get_node_ip_address()
        except ImportError:
            pass
        return socket.gethostbyname(socket.gethostname())

    @staticmethod
    def _raise_failed(futures: list[Any]) -> None:
        for future in futures:
            if future.done() and future.exception() is not None:
                raise future.exception()

    def _sync_by_disk(self, weights: NamedTensors, version: int) -> None:
        """Save the weights as one safetensors file where the servers read it, load it on each, then delete it."""
        from safetensors.torch import save_file

        directory = self.sync_dir or Path(tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"forager-weights-{os.getpid()}-{version}.safetensors"
        pairs = weights.items() if hasattr(weights, "items") else weights
        tensors: dict[str, Any] = {}
        seen: dict[int, str] = {}
        for name, tensor in pairs:  # a tied weight is stored once: safetensors refuses shared memory
            if tensor.data_ptr() in seen and tensor.numel():
                continue
            seen[tensor.data_ptr()] = name
            tensors[name] = tensor.detach().contiguous().cpu()
        save_file(tensors, str(path))
        try:
            for url in self.base_urls:
                results = self._rpc(url, "forager_load_from_disk", {"path": str(path), "version": version},
                                    timeout=self.sync_timeout_s)
                if any("error" in r for r in results):
                    raise EngineError(f"the vLLM server at {url} could not load {path}: {results}; with sync disk "
                                      "the servers must read the same path (sync_dir= on a shared filesystem)")
        finally:
            path.unlink(missing_ok=True)

    def _sync_by_ipc(self, weights: NamedTensors, version: int) -> None:
        from forager.train.engines.vllm_worker import ipc_payload

        # contiguous copies held here until every server has mapped and loaded them
        pairs = [(name, tensor.detach().contiguous())
                 for name, tensor in (weights.items() if hasattr(weights, "items") else weights)]
        try:
            payload = ipc_payload(pairs, version)
        except ValueError as err:
            raise EngineError(str(err)) from err
        for url in self.base_urls:
            results = self._rpc(url, "forager_load_ipc", payload, timeout=self.sync_timeout_s)
            if any("error" in r for r in results):
                raise EngineError(f"the vLLM server at {url} could not map the learner's tensors: {results}; "
                                  "CUDA IPC needs the server on the learner's GPUs (colocated)")

    def _pause(self) -> list[str]:
        """Pause every server (`mode=keep`: requests in flight freeze and go on after `/resume`); the ones paused.
        A server that refuses is an EngineError, and the ones already paused are resumed first."""
        paused: list[str] = []
        if not self._pause_supported:
            return paused
        for url in self.base_urls:
            try:
                response = self._post(url, "/pause", params={"mode": "keep"})
            except EngineError:
                self._resume(paused)
                raise
            if response.status_code == 404:  # a vLLM before the pause endpoints: updates land between engine steps
                self._pause_supported = False
                self._resume(paused)
                return []
            if response.status_code != 200:
                self._resume(paused)
                raise EngineError(f"the vLLM server at {url} refused to pause (HTTP {response.status_code}: "
                                  f"{response.text[:300]})")
            paused.append(url)
        return paused

    def _resume(self, urls: list[str]) -> None:
        """Resume these servers; one that cannot be reached now is left to its own health check (an EngineError
        of the next call names it)."""
        for url in urls:
            try:
                self._post(url, "/resume")
            except EngineError:
                pass

    # -- HTTP ----------------------------------------------------------------------------------
    def _rpc(self, url: str, method: str, argument: Any = None, timeout: float | None = None) -> list[Any]:
        """`POST /collective_rpc`: `method` on every worker of the server at `url`; their results."""
        body: dict[str, Any] = {"method": method}
        if argument is not None:
            body["args"] = [argument if isinstance(argument, str) else json.dumps(argument)]
        if timeout is not None:
            body["timeout"] = timeout
        response = self._post(url, "/collective_rpc", json=body, timeout=timeout)
        if response.status_code == 404:
            raise EngineError(f"the vLLM server at {url} has no /collective_rpc: start it with VLLM_SERVER_DEV_MODE=1 "
                              f"and --worker-extension-cls {EXTENSION}")
        if response.status_code != 200:
            hint = (f" (was it started with --worker-extension-cls {EXTENSION}?)"
                    if "has no" in response.text or "attribute" in response.text else "")
            raise EngineError(f"the vLLM server at {url} failed {method} (HTTP {response.status_code}: "
                              f"{response.text[:500]}){hint}")
        return response.json().get("results") or []

    def _post(self, url: str, path: str, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.post(_root(url) + path, timeout=timeout or self._http.timeout, **kwargs)
        except httpx.TimeoutException as err:
            raise EngineError(f"the vLLM server at {url} did not answer {path} within "
                              f"{timeout or self._http.timeout.read} s: it is overloaded or stuck") from err
        except httpx.TransportError as err:
            self._check_alive()
            raise EngineError(f"the vLLM server at {url} is unreachable ({type(err).__name__}: {err}): check "
                              "that it is up") from err

    def _check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()
        if self.actors:
            import ray

            for actor in self.actors:
                try:
                    problem = ray.get(actor.poll.remote(), timeout=30)
                except Exception as err:  # noqa: BLE001 - the actor or its node died
                    raise EngineError(f"a vLLM server's Ray actor died ({type(err).__name__}: {err})") from err
                if problem:
                    raise EngineError(problem)

    def _check_open(self) -> None:
        if self.closed:
            raise EngineError(f"the vLLM engine for {self.model} is closed")

    def _server_for(self, messages: list[Message]) -> int:
        """One server per episode (its opening messages), so the server's prefix cache holds the conversation."""
        if len(self.policies) == 1:
            return 0
        opening = json.dumps(messages[:2], sort_keys=True, default=str).encode()
        return int.from_bytes(hashlib.sha1(opening).digest()[:4], "big") % len(self.policies)


def _sync_method(method: str) -> str:
    if method == "auto":
        try:
            import torch

            return "nccl" if torch.cuda.is_available() else "gloo"
        except ImportError:
            return "gloo"
    if method not in ("nccl", "gloo", "disk", "ipc"):
        raise EngineError(f"unknown weight sync method {method!r}: use auto, nccl, gloo, disk or ipc")
    return method


def _braced(text: str) -> str:
    """`text` inside a command template: its own braces are not fields."""
    return text.replace("{", "{{").replace("}", "}}")


def _placement(placement: str) -> str:
    if placement == "auto":
        try:
            import ray

            return "ray" if ray.is_initialized() else "local"
        except ImportError:
            return "local"
    if placement not in ("local", "ray"):
        raise EngineError(f"unknown server placement {placement!r}: use auto, local or ray")
    return placement


def _normalize(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _root(url: str) -> str:
    return url.removesuffix("/v1")


def _visible_gpus() -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:
        return []


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` if nothing listens there, else any free port."""
    with socket.socket() as probe:
        try:
            probe.bind((host, preferred))
            return preferred
        except OSError:
            probe.bind((host, 0))
            return probe.getsockname()[1]


def _source_root() -> str:
    """The directory Forager is imported from, so a server started from a source checkout imports the extension."""
    return str(Path(__file__).resolve().parents[3])


__all__ = ["EXTENSION", "ServerActor", "ServerProcess", "VLLMEngine", "vllm_serve_command"]

"""``dff-ros status | delete | export``: look after the servers from any machine on the ROS
domain. Status lists every server, the layers it hosts, the weights it saved and interrupted
runs this machine's master can take over; delete frees a model's layers (and, on request, its
saved weights) on every server; export gathers a trained model's per-node weights into one
network file that ``dff-ros eval`` and the reference trainer load.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import rclpy
from rclpy.qos import QoSProfile

from dff_ros import weights
from dff_ros.msg import LayerStatus
from dff_ros.nodes.common import discover_servers
from dff_ros.topics import STATUS_TOPIC
from dff_ros.parts.names import part_names
from dff_ros.pff.worker import network_from_parts
from dff_ros.srv import DeleteModel, FetchParameters, ListLayers
from dff_ros.wire.tensors import TensorDecodeError, from_msg


class AdminError(RuntimeError):
    """What the command could not do, and why."""


class Admin:
    """``dff-ros status | delete | export``: a short-lived ROS node that asks every server on the
    domain."""
    def __init__(self, *, wait_seconds: float = 3.0, servers: int = 0, call_timeout: float = 10.0):
        """``wait_seconds``: how long discovery may take; ``servers``: stop waiting once this many
        servers are seen (0: until the list has settled)."""
        self.wait_seconds, self.want, self.call_timeout = wait_seconds, servers, call_timeout
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"dff_cli_{os.getpid()}", context=self.context,
                                      start_parameter_services=False)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ discovery, calls
    def servers(self) -> list[str]:
        """Servers with their services up, once the graph has settled (or ``servers`` found)."""
        start = last_change = time.monotonic()
        seen: list[str] = []
        while True:
            self.executor.spin_once(timeout_sec=0.1)
            names = discover_servers(self.node)
            now = time.monotonic()
            if names != seen:
                seen, last_change = names, now
            if (self.want and len(seen) >= self.want) or now - start > self.wait_seconds or \
                    (not self.want and seen and now - last_change > 1.5):
                return seen

    def call(self, srv_type, name: str, request):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=self.call_timeout):
                raise AdminError(f"{name} is not available")
            future = client.call_async(request)
            self.executor.spin_until_future_complete(future, timeout_sec=self.call_timeout)
            if not future.done() or future.result() is None:
                raise AdminError(f"{name} did not answer within {self.call_timeout:.0f} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    # ------------------------------------------------------------------ status
    def status(self, listen_seconds: float = 1.5) -> list[dict]:
        """Every server: where it runs, what it hosts (with its latest status), what it saved."""
        heard: dict[tuple[str, str, int], LayerStatus] = {}
        sub = self.node.create_subscription(LayerStatus, STATUS_TOPIC,
                                            lambda m: heard.__setitem__((m.server, m.model, m.layer), m),
                                            QoSProfile(depth=100))
        servers = self.servers()
        end = time.monotonic() + listen_seconds   # hosted layers report once a second
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.1)
        self.node.destroy_subscription(sub)
        out = []
        for server in servers:
            try:
                res = self.call(ListLayers, f"/{server}/list_layers", ListLayers.Request())
            except AdminError as e:
                out.append({"server": server, "error": str(e)})
                continue
            layers = []
            for info in res.layers:
                st = heard.get((server, info.model, info.index))
                layers.append({"model": info.model, "run_id": info.run_id, "index": info.index,
                               "module": info.module, "in": info.in_features, "out": info.out_features,
                               "samples": info.samples, "dropped": info.dropped,
                               "weights_restored": info.weights_restored,
                               "phase": st.phase if st else None,
                               "chapters_done": st.chapters_done if st else None,
                               "loss": round(st.loss, 5) if st and st.loss == st.loss else None})
            saved = [{"file": f, "bytes": int(b), "saved_at": t}
                     for f, b, t in zip(res.saved_files, res.saved_bytes, res.saved_at)]
            out.append({"server": server, "hostname": res.hostname, "pid": res.pid, "threads": res.threads,
                        "weights_dir": res.weights_dir, "layers": layers, "saved": saved})
        return out

    # ------------------------------------------------------------------ delete
    def delete(self, model: str, weights: bool = False, run_id: str = "") -> list[dict]:
        """``run_id``: the live run to stop (a server refuses to delete a model whose run is live
        unless the call names it)."""
        out = []
        for server in self.servers():
            res = self.call(DeleteModel, f"/{server}/delete_model",
                            DeleteModel.Request(model=model, weights=weights, run_id=run_id))
            out.append({"server": server, "success": res.success, "deleted": res.deleted, "message": res.message})
        return out

    # ------------------------------------------------------------------ export
    def gather(self, config, local_dirs: list[Path] = ()) -> tuple[dict[int, dict], dict[int, str]]:
        """Each part's saved tensors, from the server that saved it most recently, else from a
        local weights dir (a DFF master keeps the softmax head on its own machine). Returns
        the tensors and where each part came from."""
        files, names = weights.part_files(config), part_names(config)
        folder = weights.path_token(config.name)
        newest: dict[int, tuple[float, str]] = {}
        for entry in self.status(listen_seconds=0.0):
            for saved in entry.get("saved", []):
                for part, file in files.items():
                    if saved["file"] == f"{folder}/{file}" and saved["saved_at"] > newest.get(part, (-1.0, ""))[0]:
                        newest[part] = (saved["saved_at"], entry["server"])
        tensors, source = {}, {}
        for part, file in sorted(files.items()):
            if part in newest:
                server = newest[part][1]
                res = self.call(FetchParameters, f"/{server}/fetch_parameters",
                                FetchParameters.Request(model=config.name, part=part, file=file))
                if not res.success:
                    raise AdminError(f"{server} could not give {names[part]}: {res.message}")
                try:
                    tensors[part] = {n: from_msg(t, name=n) for n, t in zip(res.parameters.names, res.parameters.tensors)}
                except TensorDecodeError as e:
                    raise AdminError(f"{server} sent a bad tensor for {names[part]}: {e}") from None
                source[part] = f"{server}:{folder}/{file}"
                continue
            for d in local_dirs:
                path = Path(d) / folder / file
                if path.is_file():
                    tensors[part], source[part] = weights.saved_part_tensors(weights.load_weights(path)), str(path)
                    break
        missing = [names[p] for p in files if p not in tensors]
        if missing:
            raise AdminError(f"no saved weights of {', '.join(missing)} of {config.name!r} on the servers "
                             f"found or in {', '.join(map(str, local_dirs)) or 'a local weights dir'} (looked for "
                             f"{', '.join(files[p] for p in files if p not in tensors)}); train the model "
                             "first, with the same model YAML")
        return tensors, source

    def export(self, config, out: Path, local_dirs: list[Path] = ()) -> dict[int, str]:
        from dff_ros.ff.trainer import save_network

        tensors, source = self.gather(config, local_dirs)
        try:
            net = network_from_parts(config, tensors)
        except (KeyError, ValueError) as e:
            raise AdminError(f"the saved weights do not fit {config.name!r}: {e}") from None
        save_network(net, config, out)
        return source


def interrupted_runs(summary_dir) -> list[dict]:
    """Run states a killed master left in ``summary_dir`` (a master started again takes over)."""
    out = []
    for path in sorted(Path(summary_dir).glob("*.run-state.pt")):
        try:
            state = weights.read_run_state(path)
            out.append({"path": str(path), "model": state["config"]["name"], "run_id": state["run_id"],
                        "chapters_done": int(state.get("chapters_done", state.get("head_done", 0))),   # (older files: head_done)
                        "attempt": int(state["attempt"])})
        except Exception as e:   # say what is wrong with it, list the rest
            out.append({"path": str(path), "error": str(e)})
    return out

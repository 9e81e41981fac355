"""A robot controller as its own process, for hosts the test process cannot reach (a network
namespace): steps sessions against one coordinator and prints one JSON object with the
actions and each step's round-trip time.

    python -m tests.support.netns_robot TARGET --sessions 2 --steps 20
"""

from __future__ import annotations

import argparse
import json
import time

import grpc

from actionmesh_client.proto_names import serve_mode_name
from chaos.reference import observations, open_session, step
from service.proto import session_pb2_grpc, tensor_codec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--observation-dim", type=int, default=24)
    args = parser.parse_args()
    result: dict[str, list[object]] = {"sessions": [], "step_ms": []}
    with grpc.insecure_channel(args.target) as channel:
        stub = session_pb2_grpc.SessionServiceStub(channel)
        for s in range(args.sessions):
            session_id = open_session(stub)
            actions, modes = [], []
            for seq, obs in enumerate(observations(s, args.steps, args.observation_dim), start=1):
                start = time.perf_counter()
                reply = step(stub, session_id, seq, obs)
                result["step_ms"].append((time.perf_counter() - start) * 1e3)
                actions.append(tensor_codec.decode(reply.action).tolist())
                modes.append(serve_mode_name(reply.serve_mode))
            result["sessions"].append({"seed": s, "actions": actions, "modes": modes})
    print(json.dumps(result))


if __name__ == "__main__":
    main()

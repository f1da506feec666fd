"""KServe v2 / Open Inference Protocol over gRPC (`inference.GRPCInferenceService`) and grpc.health.v1.

Served by every front-end process beside HTTP, on `RANET_GRPC_PORT` (8081, as KServe; 0 turns it off),
over the same `InferenceService`, engine client and admission as the REST routes: `codec` translates
messages to and from the v2 codec's types, `servicer` implements the RPCs, `server` runs them.
"""

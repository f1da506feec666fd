"""Run by tests/api/test_api_kserve_client.py with KServe's own client in its own venv (setup.sh's
.deploy-tools/kserve-client): health, readiness, and one ModelInfer with budget parameters, printed as
JSON for the test to compare with what the server answers over REST."""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def main(target: str, model: str, tensor_path: str) -> None:
    client = InferenceGRPCClient(target)
    try:
        array = np.load(tensor_path)
        tensor = InferInput("image", list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        request = InferRequest(
            model, [tensor], request_id="kserve-1", parameters={"confidence": "1"}
        )  # KServe sends str, int, bool only
        response = await client.infer(request)
        outputs = {output.name: output.as_numpy().tolist() for output in response.outputs}
        outputs["label"] = [v.decode() if isinstance(v, bytes) else v for v in outputs["label"]]
        document = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
            "id": response.id,
            "model_name": response.model_name,
            "outputs": outputs,
        }
        print(json.dumps(document))
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))

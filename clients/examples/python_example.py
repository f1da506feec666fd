"""RANet Serve from Python: the sync client, budgets, errors, and the async client.

Run against a server (`make serve`): python clients/examples/python_example.py [BASE_URL]
Needs `pip install -e clients/python` (the `ranet_client` package).
"""

from __future__ import annotations

import asyncio
import sys

from ranet_client import AsyncRanetClient, BudgetError, RanetClient, RanetError, bundled_samples


def sync_example(url: str) -> None:
    samples = bundled_samples()  # 20 labelled Fashion-MNIST test images
    with RanetClient(url, timeout=10.0, retry=4) as client:
        client.wait_ready(timeout=30)
        catalogue = client.models()
        model = catalogue.get(catalogue.default_model)
        version = model.latest if model else None
        if version is None:
            raise SystemExit(f"default model {catalogue.default_model!r} has no ready version")
        print(f"model {model.name} v{version.version}: {len(version.exits)} exits")  # type: ignore[union-attr]
        for exit_info in version.exits:
            print(f"  exit {exit_info.index}: {exit_info.cumulative_flops / 1e6:.2f} MFLOPs")

        # The server's default operating point.
        answer = client.classify([s.data for s in samples[:4]])
        print(f"default point {answer.operating_point!r}:")
        for sample, result in zip(samples, answer.results, strict=False):
            print(
                f"  {sample.name}: {result.label} (true {sample.label}) p={result.confidence:.2f} "
                f"exit {result.exit} {result.mflops:.2f} MFLOPs"
            )

        # A hard cap: no image may cost more than the second exit.
        cap = version.exits[1].cumulative_flops
        capped = client.classify(samples[0].data, max_flops=cap, top_k=3)
        print(
            f"capped at {cap / 1e6:.2f} MFLOPs: exit {capped.result.exit}, "
            f"budget-limited={capped.result.budget_limited}, top-3 {[t.label for t in capped.result.top_k]}"
        )

        # An average budget picks the best calibrated operating point within it ("20M" strings work too).
        if version.operating_points:
            cheapest = min(p.expected_flops for p in version.operating_points)
            picked = client.classify(samples[0].data, target_flops=cheapest)
            print(f"target {cheapest / 1e6:.2f} MFLOPs -> operating point {picked.operating_point!r}")

        # Errors are typed; BudgetError carries the cheapest exit's cost.
        try:
            client.classify(samples[0].data, max_flops=1)
        except BudgetError as exc:
            print(f"refused: {exc.message} (details: {exc.details})")


async def async_example(url: str) -> None:
    samples = bundled_samples()
    async with AsyncRanetClient(url) as client:
        answers = await asyncio.gather(
            *(client.classify(s.data, target_flops="15M") for s in samples[:8]), return_exceptions=True
        )
    correct = sum(
        1
        for s, a in zip(samples, answers, strict=False)
        if not isinstance(a, BaseException) and a.result.class_index == s.class_index
    )
    print(f"async: {len(answers)} concurrent requests, {correct} correct")


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
    try:
        sync_example(url)
        asyncio.run(async_example(url))
    except RanetError as exc:
        raise SystemExit(f"error: {exc}") from exc


if __name__ == "__main__":
    main()

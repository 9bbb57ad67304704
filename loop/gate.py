"""The gate between a retrained pipeline and production (docs/architecture.md §9).

Both pipelines were judged by `recstack eval artifacts` on the same recent holdout. The new one
passes when every check holds:

- quality: its pipeline NDCG@k >= the serving one's - ndcg_tolerance;
- retrieval: its recall@N (N = retrieve_n) >= the serving one's - recall_tolerance;
- parity: each new artifact's ONNX graph matched torch at export (max |diff| <= atol);
- latency: p99 of one retrieve + rank on the new artifacts <= latency_budget_ms.
"""

from dataclasses import asdict, dataclass

from recstack.artifact_manifest import ArtifactManifest
from recstack.loop.config import Gate


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: float
    threshold: float
    detail: str


def _at_least(name: str, new: float, old: float, tolerance: float) -> Check:
    floor = old - tolerance
    detail = f"new {new:.4f} vs serving {old:.4f} - tolerance {tolerance}"
    return Check(name, new >= floor, new, floor, detail)


def gate_checks(
    gate: Gate,
    old: dict,
    new: dict,
    manifests: dict[str, ArtifactManifest],
    retrieve_n: int,
) -> list[dict]:
    """Every check of the gate, passed or not (old and new: eval-artifacts reports)."""
    ndcg, recall = f"ndcg@{gate.k}", f"recall@{retrieve_n}"
    checks = [
        _at_least(f"pipeline {ndcg}", new["pipeline"][ndcg], old["pipeline"][ndcg],
                  gate.ndcg_tolerance),
        _at_least(f"retrieval {recall}", new["retrieval"][recall], old["retrieval"][recall],
                  gate.recall_tolerance),
    ]  # fmt: skip
    for side, manifest in manifests.items():
        parity = manifest.parity
        checks.append(
            Check(
                f"{side} export parity",
                parity.max_abs_diff <= parity.atol,
                parity.max_abs_diff,
                parity.atol,
                f"onnxruntime vs torch max |diff| {parity.max_abs_diff:.2e} (atol {parity.atol})",
            )
        )
    latency = new["latency"]
    checks.append(
        Check(
            "latency p99",
            latency["p99_ms"] <= gate.latency_budget_ms,
            latency["p99_ms"],
            gate.latency_budget_ms,
            f"p99 {latency['p99_ms']:.1f} ms over {latency['requests']} single requests "
            f"(budget {gate.latency_budget_ms} ms)",
        )
    )
    return [asdict(check) for check in checks]


def failed(checks: list[dict]) -> list[str]:
    return [f"{c['name']}: {c['detail']}" for c in checks if not c["passed"]]

"""Comparison mode: a fine-tune with no baselines of its own (or any fine-tune under --compare) is measured beside
its base, claim by claim, on the same prompts (mechbench.compare).

    pytest suites/ --model=/ckpt/my-finetune --base-model=toy-llama [--quick]

Each claim's test records every side-by-side number (base, fine-tune, difference or share of the gain with its
95% interval over contexts, the stored reference fine-tunes) to results.jsonl under the fine-tune's own name,
and fails when the claim's statement does not hold for the fine-tune as it holds for its base: the chance guard
(the model must do the task), the circuit beating random circuits, the gain carried by the circuit, the same
attention routes, and the checks listed in mechbench.compare. ``test_mechanism_verdict`` passes when the
verdict is one of "same circuit, strengthened" / "no gain, same circuit". The Markdown report with its figures
is written to the results directory when the session ends.
"""

import pytest

from mechbench.compare import CLAIMS, SAME_MECHANISM, VERDICT_CLAIMS, record, record_verdict

pytestmark = pytest.mark.claim


@pytest.mark.parametrize("claim", list(CLAIMS))
def test_compared_with_base(compared_model, claim, comparison, results, request):
    result = comparison.claim(claim)
    record(results, comparison, result)
    if result.error is not None:  # reported as not run (in the report too); the other claims ran
        pytest.skip(f"{claim} could not run for {compared_model} against {comparison.base.name}: {result.error}")
    for row in result.rows:
        request.node.user_properties.append(
            (
                "claim",
                f"compare:{claim} [{compared_model} vs {comparison.base.name}] "
                f"{row.measure}: {row.statistic} {row.estimate}",
            )
        )
    if result.failed:
        pytest.fail(
            f"{len(result.failed)} check(s) of {claim} failed for {compared_model} against "
            f"{comparison.base.name}:\n" + "\n".join(c.message for c in result.failed),
            pytrace=False,
        )
    not_applicable = [c for c in result.checks if c.passed is None]
    if not_applicable and not any(c.passed for c in result.checks if not c.name.endswith("does the task")):
        pytest.skip("; ".join(c.message for c in not_applicable))


def test_mechanism_verdict(compared_model, comparison, results, request):
    for claim in VERDICT_CLAIMS:
        comparison.claim(claim)
    if not comparison.verdict_ready():
        pytest.skip(
            "no verdict: " + "; ".join(f"{name} could not run: {why}" for name, why in comparison.not_run().items())
        )
    verdict = comparison.verdict()
    record_verdict(results, comparison, verdict)
    request.node.user_properties.append(
        (
            "claim",
            f"verdict [{compared_model} vs {comparison.base.name}]: {verdict.label}: " + "; ".join(verdict.reasons),
        )
    )
    assert verdict.same_mechanism, (
        f"{compared_model} against {comparison.base.name}: {verdict.label} "
        f"(passes only as {' / '.join(SAME_MECHANISM)}): " + "; ".join(verdict.reasons)
    )

"""Claim: top-1 entity-tracking accuracy of each model (paper, docs/paper.md §8.1: Llama-7B 0.66, Vicuna-7B 0.67,
Goat-7B 0.82, FLoat-7B 0.82 on 500 examples).

For the paper's numbers the stored tolerance is 3 standard errors of the difference of two independent
500-example binomial estimates plus the paper's rounding; for a model mechbench measured, the same bound when
the examples differ (another --seed or --limit) and 3/n on the baseline's own examples
(mechbench.claims.tolerance.binomial).
"""

from mechbench.claims.spec import Claim
from mechbench.claims.tolerance import binomial

CLAIM = Claim(
    order=1,
    name="accuracy",
    title="accuracy",
    sections="8.1",
    suite="test_accuracy.py",
    measures="top-1 on 500 prompts",
    description=(
        "Full-model top-1 accuracy on the 7-box entity-tracking task: argmax of the last-position logits "
        "must equal the first token of the correct object."
    ),
    unit="fraction",
    keys=("model",),
    rows=("model",),
    column=None,
    sizes=(("prompts", 500),),  # the paper's evaluation size
    tolerance="binomial, 3 SE of two estimates; 3/n on the baseline's own prompts",
    needs_working_model=False,  # the accuracy claim is where a model that lost the task shows as such
)


@CLAIM.test()
def accuracy(run):
    dataset, correct = run.prompts(), run.correct()
    measured, n = correct.float().mean().item(), len(dataset)
    run.check(
        {"model": run.model.name},
        measured,
        n=n,
        correct=correct,
        clusters=dataset.clusters(),
        tolerance=binomial(measured, n),
    )


@CLAIM.comparison
def compare(c):
    """The accuracy difference (fine-tune - base) on the verdict's prompts, and the chance guard on both models."""
    from mechbench.compare import Row, as_array  # comparison mode imports the registry, which imports this module

    n = c.lane.verdict_examples
    b, f = c.correct("base", n), c.correct("fine_tune", n)
    row = Row(
        "accuracy",
        "accuracy",
        {},
        as_array(b).mean(),
        as_array(f).mean(),
        c.diff(b, f, c.clusters(n)),
        references=c.refs(c.stored_accuracy),
        note=f"{n} prompts",
    )
    return [row], c.task_checks(n)


@CLAIM.workloads
def workloads(p):
    from mechbench.plan import Workload

    return [Workload("accuracy", forwards=CLAIM.size("prompts"))]

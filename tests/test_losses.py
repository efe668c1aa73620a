"""Each objective equals sentence-transformers' loss of the same name on the same embeddings and
targets (value and gradient), and in-batch negatives gathered across DDP ranks equal one big batch."""
import pytest
import torch
import torch.multiprocessing as mp

from src.losses import AnglELoss, CoSENTLoss, CosineSimilarityLoss, MultipleNegativesRankingLoss


def embeddings(*rows: int, dim: int = 32, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=generator, requires_grad=True) for n in rows]


def nli_scores(n: int) -> torch.Tensor:
    """Graded NLI targets, with the ties a real batch has."""
    return torch.tensor([1.0, 0.5, 0.0])[torch.arange(n) % 3]


def assert_same_loss_and_grad(ours, theirs, inputs: list[torch.Tensor], scores: torch.Tensor | None) -> None:
    mine = ours(inputs, scores)
    my_grads = torch.autograd.grad(mine, inputs)
    reference = theirs.compute_loss_from_embeddings(inputs, scores)
    reference_grads = torch.autograd.grad(reference, inputs)
    torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)
    for x, y in zip(my_grads, reference_grads):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dim", [32, 33])  # AnglE pads an odd dimension
@pytest.mark.parametrize("scale", [20.0, 7.5])
def test_pair_losses_match_sentence_transformers(dim, scale):
    from sentence_transformers.sentence_transformer import losses as st

    inputs, scores = embeddings(16, 16, dim=dim), nli_scores(16)
    assert_same_loss_and_grad(CosineSimilarityLoss(), st.CosineSimilarityLoss(None), inputs, scores)
    assert_same_loss_and_grad(CoSENTLoss(scale), st.CoSENTLoss(None, scale=scale), inputs, scores)
    assert_same_loss_and_grad(AnglELoss(scale), st.AnglELoss(None, scale=scale), inputs, scores)


def test_cosent_on_float_targets_and_a_batch_of_one():
    from sentence_transformers.sentence_transformer import losses as st

    inputs = embeddings(9, 9)
    scores = torch.rand(9, generator=torch.Generator().manual_seed(1)) * 5  # STS-style floats
    assert_same_loss_and_grad(CoSENTLoss(), st.CoSENTLoss(None), inputs, scores)
    one = embeddings(1, 1)
    # nothing to rank: log(1 + 0)
    assert CoSENTLoss()(one, torch.ones(1)).item() == 0.0


@pytest.mark.parametrize("negatives", [0, 1])
@pytest.mark.parametrize("scale", [20.0, 5.0])
def test_in_batch_negatives_match_sentence_transformers(negatives, scale):
    from sentence_transformers.sentence_transformer import losses as st

    inputs = embeddings(*[12] * (2 + negatives))
    assert_same_loss_and_grad(
        MultipleNegativesRankingLoss(scale), st.MultipleNegativesRankingLoss(None, scale=scale), inputs, None
    )
    assert_same_loss_and_grad(
        MultipleNegativesRankingLoss(scale, symmetric=True),
        st.MultipleNegativesSymmetricRankingLoss(None, scale=scale),
        inputs,
        None,
    )


def test_loss_descriptions_for_the_model_card():
    from sentence_transformers.sentence_transformer import losses as st

    for ours, theirs in [
        (CosineSimilarityLoss(), st.CosineSimilarityLoss(None)),
        (CoSENTLoss(), st.CoSENTLoss(None)),
        (AnglELoss(), st.AnglELoss(None)),
    ]:
        assert type(ours).__name__ == type(theirs).__name__
        assert ours.get_config_dict() == theirs.get_config_dict()
    assert CoSENTLoss().citation.strip() == st.CoSENTLoss(None).citation.strip()
    assert AnglELoss().citation.strip() == st.AnglELoss(None).citation.strip()
    mnrl = MultipleNegativesRankingLoss(scale=30.0, symmetric=True)
    assert mnrl.get_config_dict()["scale"] == 30.0 and mnrl.get_config_dict()["symmetric"] is True
    assert mnrl.citation.strip() == st.MultipleNegativesSymmetricRankingLoss(None).citation.strip()
    assert MultipleNegativesRankingLoss().citation.strip() == st.MultipleNegativesRankingLoss(None).citation.strip()


def test_rows_without_a_hard_negative_add_no_candidate():
    anchor, positive, negative = embeddings(6, 6, 2)
    logits = 20.0 * torch.nn.functional.normalize(anchor, dim=-1) @ torch.nn.functional.normalize(
        torch.cat([positive, negative]), dim=-1
    ).T
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(6))
    torch.testing.assert_close(MultipleNegativesRankingLoss()([anchor, positive, negative]), expected)


# -- DDP: two CPU processes (gloo) -------------------------------------------------------------------

ROWS = {0: (3, 3), 1: (3, 1)}  # (anchors, hard negatives) per rank: negatives uneven on purpose


def _ddp_worker(rank: int, store: str, symmetric: bool, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    anchor, positive, negative = embeddings(6, 6, 4, dim=8)
    n, m = ROWS[rank]
    local = [anchor[3 * rank : 3 * rank + n], positive[3 * rank : 3 * rank + n], negative[3 * rank : 3 * rank + m]]
    local = [x.detach().requires_grad_() for x in local]
    loss = MultipleNegativesRankingLoss(symmetric=symmetric, gather_across_ranks=True)(local)
    loss.backward()
    torch.save({"loss": loss.detach(), "grads": [x.grad for x in local]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # several processes
@pytest.mark.parametrize("symmetric", [False, True])
def test_gathered_in_batch_negatives_equal_one_big_batch(tmp_path, symmetric):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), symmetric, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    anchor, positive, negative = embeddings(6, 6, 4, dim=8)
    full = MultipleNegativesRankingLoss(symmetric=symmetric)([anchor, positive, negative])
    full.backward()
    # equal anchor counts: the global loss is the mean of the ranks' losses
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, full.detach())
    # each rank's gradient carries every rank's loss (summed by the gather's backward), and DDP
    # then averages over 2 ranks: 2x the one-batch gradient here gives exactly that gradient there
    for rank, (n, m) in ROWS.items():
        expected = [anchor.grad[3 * rank : 3 * rank + n], positive.grad[3 * rank : 3 * rank + n],
                    negative.grad[3 * rank : 3 * rank + m]]
        for got, want in zip(ranks[rank]["grads"], expected):
            torch.testing.assert_close(got, 2 * want)


# -- end to end: each loss config trains the tiny BERT -------------------------------------------------

@pytest.mark.parametrize(
    "overrides, target",
    [
        (["loss=cosent"], "src.losses.CoSENTLoss"),
        (["loss=angle"], "src.losses.AnglELoss"),
        (["loss=in_batch_negatives"], "src.losses.MultipleNegativesRankingLoss"),
        (["loss=in_batch_negatives", "loss.symmetric=true"], "src.losses.MultipleNegativesRankingLoss"),
    ],
)
def test_each_loss_config_trains(tmp_path, tiny_overrides, overrides, target):
    import csv
    import math

    from src.config import compose_config
    from src.train import train

    cfg = compose_config(tiny_overrides + overrides + ["trainer.max_steps=3", "trainer.log_every_n_steps=1"], tmp_path)
    metrics = train(cfg)
    assert -1 <= metrics["val/spearman_cosine"] <= 1
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["loss"]["_target_"] == target
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert losses and all(math.isfinite(x) for x in losses)


def test_a_triplet_loss_on_pair_data_is_refused(tmp_path, tiny_overrides):
    from src.config import compose_config
    from src.errors import UserInputError
    from src.train import train

    cfg = compose_config(tiny_overrides + ["loss=in_batch_negatives", "data.train_format=pairs"], tmp_path)
    with pytest.raises(UserInputError, match="data.train_format: 'pairs', but the loss MultipleNegativesRankingLoss"):
        train(cfg)


@pytest.mark.slow  # several processes
def test_in_batch_negatives_gathered_under_lightning_ddp(tmp_path, tiny_overrides):
    """Two CPU ranks (gloo) train on triplets with candidates gathered across ranks."""
    import json
    import os
    import subprocess
    import sys

    from src.config import PROJECT_ROOT

    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "src.train", *tiny_overrides, "trainer=ddp_cpu", "loss=in_batch_negatives",
         "loss.gather_across_ranks=true", "trainer.max_steps=2", "test=false", f"hydra.run.dir={run}",
         f"paths.cache_dir={tmp_path / 'cache'}"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in (run / "train.log").read_text()
    assert -1 <= json.loads((run / "metrics.json").read_text())["val/spearman_cosine"] <= 1


def test_objective_experiments_compose(tmp_path):
    from src.config import compose_config

    best = compose_config(["+experiment=hebrew_nli_best"], tmp_path / "best")
    assert best.model.loss["_target_"] == "src.losses.CoSENTLoss" and best.data.train_format == "pairs"
    # the benchmark scores every seed on the same held-out premises
    cell = compose_config(["+experiment=objectives", "loss=in_batch_negatives", "seed=43"], tmp_path / "cell")
    assert cell.data.split_seed == 42 and cell.data.train_format == "triplets" and cell.data.val_fraction == 0.2

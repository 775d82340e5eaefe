"""DSpark's cross-rank normalization with a plugin objective: two real gloo ranks (CPU, spawned processes).

DSpark all-reduces its loss denominator inside the model and scales by the world size; the plugin does
the same with the objective's (numerator, denominator).  Checked: identical batches on both ranks give
the single-process loss and gradients; different batches give, rank by rank, the same loss as DSpark's
own objective for the composite that equals it (``0.1*dflash + 1.8*tv``: DSpark's L1 is 2 TV).
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("specforge")

pytestmark = pytest.mark.slow

SPECS = (None, "0.1*dflash + 1.8*tv", "dpace", "lk-lambda")


def _run(spec, data_seed):
    from _tiny_methods import step, tiny_dspark

    model, batch = tiny_dspark(data_seed=data_seed, **({} if spec is None else {"loss_type": spec}))
    loss, _, _, grads = step(model, batch)
    return {"loss": loss, "grads": grads}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        import specforge_dpace

        specforge_dpace.install()
        results = {("same", spec): _run(spec, 0) for spec in SPECS}
        results.update({("own", spec): _run(spec, 10 + rank) for spec in SPECS})
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_normalize_like_dspark(specforge_installed, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for spec in SPECS:
        single = _run(spec, 0)
        for result in ranks:
            got = result[("same", spec)]
            torch.testing.assert_close(got["loss"], single["loss"], rtol=1e-6, atol=0)
            for name, grad in single["grads"].items():
                torch.testing.assert_close(got["grads"][name], grad, rtol=1e-5, atol=1e-8)
    for result in ranks:  # per rank, normalized by the denominator summed over both ranks
        own, ours = result[("own", None)], result[("own", "0.1*dflash + 1.8*tv")]
        torch.testing.assert_close(ours["loss"], own["loss"], rtol=1e-5, atol=1e-6)
    assert not torch.equal(ranks[0][("own", None)]["loss"], ranks[1][("own", None)]["loss"])  # different batches

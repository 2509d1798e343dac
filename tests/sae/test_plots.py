from sae.plots import plot_frontier, plot_training


def test_plots_write_pngs(tmp_path):
    history = [{"tokens": t, "loss": 1 / (t + 1), "l0": 8} for t in range(0, 1000, 100)]
    training = plot_training(history, [{"tokens": 500, "fvu": 0.2}], tmp_path / "t.png")
    points = [{"name": f"k={k}", "l0": k, "fvu": 1 / k} for k in (8, 16, 32)]
    frontier = plot_frontier(points, tmp_path / "f.png")
    for path in (training, frontier):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

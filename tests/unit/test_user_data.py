"""A device's own data: .npz, .csv and image-folder formats (docs/data-format.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedhet.data.user import load_user_data

MEAN, STD = 0.2860, 0.3530


def _fmnist_norm(pixels_0_255: np.ndarray) -> torch.Tensor:
    return (torch.as_tensor(pixels_0_255, dtype=torch.float32) / 255.0 - MEAN) / STD


def test_npz_uint8_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    data = load_user_data(tmp_path / "mine.npz")
    assert data.x.shape == (5, 1, 28, 28) and data.x.dtype == torch.float32
    assert data.y.tolist() == [0, 1, 2, 1, 0] and data.y.dtype == torch.int64
    assert data.num_classes == 3
    torch.testing.assert_close(data.x[:, 0], _fmnist_norm(x))


def test_npz_float_in_unit_range_and_num_classes(tmp_path: Path) -> None:
    x = np.full((2, 1, 28, 28), 0.5, dtype=np.float32)
    np.savez(tmp_path / "f.npz", x=x, y=np.array([3, 4]))
    data = load_user_data(tmp_path / "f.npz", num_classes=10)
    assert data.num_classes == 10
    assert data.x[0, 0, 0, 0].item() == pytest.approx((0.5 - MEAN) / STD)


def test_npz_resized_channel_last_colour(tmp_path: Path) -> None:
    x = np.full((3, 8, 8, 3), 255, dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x=x, y=np.array([0, 1, 1]))
    data = load_user_data(tmp_path / "rgb.npz", image_size=28)
    assert data.x.shape == (3, 3, 28, 28)
    # colour images: (1.0 - 0.5) / 0.5 = 1 everywhere after the resize of a constant image
    torch.testing.assert_close(data.x, torch.ones(3, 3, 28, 28))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((2, 28, 28))}, r"missing array\(s\) \['y'\]"),
        ({"x": np.zeros((2, 28, 28)), "y": np.array([0, 1, 2])}, "x has 2 samples but y has 3"),
        ({"x": np.zeros((2, 28)), "y": np.array([0, 1])}, "x must have shape"),
        ({"x": np.zeros((2, 28, 28)), "y": np.array([0.5, 1])}, "labels must be integers"),
        ({"x": np.full((1, 28, 28), 300.0), "y": np.array([0])}, r"\[0, 255\]"),
    ],
)
def test_npz_errors_name_file_and_problem(
    tmp_path: Path, arrays: dict[str, np.ndarray], match: str
) -> None:
    np.savez(tmp_path / "broken.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"broken.npz.*{match}"):
        load_user_data(tmp_path / "broken.npz")


def test_label_out_of_range(tmp_path: Path) -> None:
    np.savez(tmp_path / "l.npz", x=np.zeros((2, 28, 28), np.uint8), y=np.array([0, 10]))
    with pytest.raises(ValueError, match=r"l.npz: label 10 outside \[0, 10\)"):
        load_user_data(tmp_path / "l.npz", num_classes=10)


def test_csv_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (4, 784))
    labels = [7, 0, 7, 2]
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    lines = [header] + [
        f"{lab}," + ",".join(map(str, row)) for lab, row in zip(labels, pixels, strict=True)
    ]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    data = load_user_data(tmp_path / "d.csv", num_classes=10)
    assert data.x.shape == (4, 1, 28, 28)
    assert data.y.tolist() == labels
    torch.testing.assert_close(data.x[:, 0], _fmnist_norm(pixels.reshape(4, 28, 28)))


def test_csv_errors(tmp_path: Path) -> None:
    (tmp_path / "nolabel.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"nolabel.csv.*'label'"):
        load_user_data(tmp_path / "nolabel.csv")
    (tmp_path / "odd.csv").write_text("label,p0,p1,p2\n1,0,0,0\n")
    with pytest.raises(ValueError, match=r"odd.csv.*square"):
        load_user_data(tmp_path / "odd.csv")
    (tmp_path / "ragged.csv").write_text("label,p0,p1,p2,p3\n1,0,0,0\n")
    with pytest.raises(ValueError, match=r"ragged.csv, line 2"):
        load_user_data(tmp_path / "ragged.csv")


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)


def test_image_folder_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    expected = {}
    for name, value in (("shirt", 255), ("boot", 0)):
        (root / name).mkdir(parents=True)
        for i in range(2):
            _save_png(root / name / f"{i}.png", np.full((28, 28), value))
        expected[name] = value
    (root / "boot" / "notes.txt").write_text("ignored")
    data = load_user_data(root)
    # classes sorted alphabetically: boot -> 0, shirt -> 1
    assert data.y.tolist() == [0, 0, 1, 1]
    assert data.num_classes == 2
    assert data.x.shape == (4, 1, 28, 28)
    assert data.x[0].max().item() == pytest.approx((0.0 - MEAN) / STD)
    assert data.x[2].min().item() == pytest.approx((1.0 - MEAN) / STD)


def test_image_folder_resizes_to_image_size(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    _save_png(tmp_path / "a" / "x.png", np.full((10, 12), 255))
    data = load_user_data(tmp_path, image_size=28)
    assert data.x.shape == (1, 1, 28, 28)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no class folders"):
        load_user_data(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match=r"empty_class: class folder holds no images"):
        load_user_data(tmp_path)


def test_missing_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing.npz"):
        load_user_data(tmp_path / "nothing.npz")
    (tmp_path / "data.json").write_text("{}")
    with pytest.raises(ValueError, match=r"unsupported data format"):
        load_user_data(tmp_path / "data.json")


def test_device_with_fewer_classes_trains_in_the_runs_class_space(tmp_path: Path) -> None:
    """Issue 10 item 7: labels 0..4 on a device of a 10-class run keep the 10-class model."""
    import json

    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

    from fedhet.client.runtime import ClientContext
    from fedhet.config import default_run_config
    from fedhet.methods.fedavg import client
    from fedhet.models import build_model
    from fedhet.sim import LocalGrid

    LocalGrid(None, [], {})  # sets Flower's task identity so Messages can be built in-process
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "five.npz",
        x=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        y=np.arange(20) % 5,
    )
    raw = default_run_config(run_name="user5", local_steps=1, batch_size=4)
    ctx = ClientContext.from_context(
        Context(
            run_id=1,
            node_id=7,
            node_config={"data-path": str(tmp_path / "five.npz"), "device-id": "line5"},
            state=RecordDict(),
            run_config=json.loads(json.dumps(raw)),
        )
    )
    assert ctx.data().train.num_classes == 10
    model = build_model("cnn_s")
    arrays = {k: Array(v.detach().numpy().copy()) for k, v in model.state_dict().items()}
    msg = Message(
        RecordDict(
            {
                "arrays": ArrayRecord(array_dict=arrays),
                "config": ConfigRecord({"server-round": 1}),
            }
        ),
        dst_node_id=7,
        message_type="train",
    )
    reply = client.train(msg, ctx)
    out = reply.array_records["arrays"]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: tuple(v.shape) for k, v in arrays.items()
    }
    assert int(reply.metric_records["metrics"]["num-examples"]) == len(ctx.data().train)

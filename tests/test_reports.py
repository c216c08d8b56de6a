"""reports.py: metrics.json is merged, not overwritten; the PNG opens; the table lines up."""

import json

from PIL import Image

from tf_mocov3.training import reports


def test_write_report_merges_metrics_and_writes_a_png(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"knn_top1": 50.0, "nested": {"a": 1}}))
    summary = reports.write_report(str(tmp_path), name="probe", metrics={"linear_top1": 61.5, "nested": {"b": 2}},
                                   curves={"loss": [(1, 2.0), (2, 1.5)], "top-1": [(1, 40.0), (2, 55.0)]},
                                   table=[{"lr": 0.4, "test_top1": 61.5}])
    merged = json.loads((tmp_path / "metrics.json").read_text())
    assert merged == {"knn_top1": 50.0, "linear_top1": 61.5, "nested": {"a": 1, "b": 2}}
    with Image.open(tmp_path / "probe.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert summary.splitlines()[0] == "== probe ==" and "61.50" in summary


def test_format_table_aligns_columns_and_formats_numbers():
    # Numeric columns (headers too) are right-aligned, text left; >= 1 has two decimals, < 1 four digits.
    text = reports.format_table([{"name": "a", "lr": 0.004, "top1": 71.234},
                                 {"name": "bb", "top1": 5.0, "extra": True}])
    assert text.splitlines() == [
        "name     lr   top1  extra",
        "----  -----  -----  -----",
        "a     0.004  71.23",
        "bb            5.00  True",
    ]
    assert reports.format_table([]) == "(no rows)"

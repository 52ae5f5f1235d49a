"""Tables show every cell whole and verbatim: long run names are folded, never cut; brackets are not markup."""

from cnnlab.utils import console as out


def test_long_names_fold_and_brackets_survive():
    names = [f"ablation_resnet32-wd5e-4-bn-crop-flip-bs128-seed{i}-a-suffix-long-enough-to-wrap-{i}" * 2 for i in range(2)]
    with out.console.capture() as cap:
        out.print_table("runs [all]", ["run", "hint"], [(names[0], "pip install 'cnnlab[ray]'"), (names[1], 0.5)])
    lines = [ln.split("│") for ln in cap.get().splitlines() if ln.startswith("│")]
    first = "".join(cells[1].strip() for cells in lines)
    second = "".join(cells[2].strip() for cells in lines)
    assert first == names[0] + names[1]  # whole and in order: the two rows stay distinguishable
    assert second.replace(" ", "") == "pipinstall'cnnlab[ray]'0.5"  # brackets shown, not taken as markup
    assert "runs [all]" in cap.get()


def test_a_long_table_prints_a_summary_and_writes_every_row(tmp_path):
    import csv

    rows = [(f"run{i}", i / 10) for i in range(50)]
    with out.console.capture() as cap:
        out.print_table("t", ["run", "acc"], rows, limit=40, full_csv=tmp_path / "all.csv")
    text = cap.get()
    assert "run39" in text and "run40" not in text
    assert "10 more rows not shown; all 50 rows in" in " ".join(text.split())
    with open(tmp_path / "all.csv", newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == ["run", "acc"] and len(written) == 51 and written[-1] == ["run49", "4.9"]
    with out.console.capture() as cap:
        out.print_table("t", ["run", "acc"], rows[:40], limit=40, full_csv=tmp_path / "short.csv")
    assert "more rows" not in cap.get() and not (tmp_path / "short.csv").exists()  # short tables are whole

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

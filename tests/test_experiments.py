import math

from bnr.pipeline.experiments import arm_table, read_exp_csv

CSV = """Experiment,State,metrics/seeds.json:miou,seed,method,noise_scale,infer_seeds.source
,,5.0,0,bnr,1.0,transcam
w,Success,10.0,0,bnr,1.0,transcam
a,Success,4.0,0,transcam,1.0,transcam
b,Success,6.0,1,transcam,1.0,transcam
c,Success,8.0,0,bnr,none,transcam
d,Success,12.0,0,bnr,2.0,transcam
e,Success,30.0,0,transcam,1.0,clsattn
f,Success,,1,bnr,2.0,transcam
g,Running,99.0,1,bnr,2.0,transcam
"""


def test_arm_table_groups_by_arm_and_seed():
    runs = read_exp_csv(CSV)
    assert len(runs) == 6  # baseline, running and metric-less rows are dropped
    table = arm_table(runs).set_index("arm")
    assert table.loc["TransCAM (baseline)", "runs"] == 2
    assert table.loc["TransCAM (baseline)", "miou_mean"] == 5.0
    assert math.isclose(table.loc["TransCAM (baseline)", "miou_std"], 1.41, abs_tol=0.01)
    assert table.loc["BNR without noise", "miou_mean"] == 8.0
    assert table.loc["BNR x1", "miou_mean"] == 10.0
    assert table.loc["BNR x2", "runs"] == 1 and math.isnan(table.loc["BNR x2", "miou_std"])
    other = arm_table(runs, source="clsattn").set_index("arm")
    assert other.loc["TransCAM (baseline)", "miou_mean"] == 30.0

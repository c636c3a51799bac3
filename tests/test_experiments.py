import math

from bnr.experiments import arm_table, read_exp_csv

CSV = """Experiment,rev,typ,metrics/seeds.json:miou,params.yaml:method,params.yaml:noise_scale,\
params.yaml:seed,params.yaml:infer_seeds.source
,workspace,baseline,10.0,bnr,1.0,0,transcam
a,1,branch_commit,4.0,transcam,1.0,0,transcam
b,2,branch_commit,6.0,transcam,1.0,1,transcam
c,3,branch_commit,8.0,bnr,0.0,0,transcam
d,4,branch_commit,12.0,bnr,2.0,0,transcam
e,5,branch_commit,30.0,transcam,1.0,0,clsattn
f,6,branch_commit,,bnr,2.0,1,transcam
"""


def test_arm_table_groups_by_arm_and_seed():
    runs = read_exp_csv(CSV)
    assert len(runs) == 6  # the row without a metric is dropped
    table = arm_table(runs).set_index("arm")
    assert table.loc["TransCAM (baseline)", "runs"] == 2
    assert table.loc["TransCAM (baseline)", "miou_mean"] == 5.0
    assert math.isclose(table.loc["TransCAM (baseline)", "miou_std"], 1.41, abs_tol=0.01)
    assert table.loc["BNR without noise", "miou_mean"] == 8.0
    assert table.loc["BNR x1", "miou_mean"] == 10.0
    assert table.loc["BNR x2", "runs"] == 1 and math.isnan(table.loc["BNR x2", "miou_std"])
    other = arm_table(runs, source="clsattn").set_index("arm")
    assert other.loc["TransCAM (baseline)", "miou_mean"] == 30.0

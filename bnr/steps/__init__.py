"""One module per pipeline stage, each with ``Inputs`` / ``Outputs`` (its paths, given by the
stage's ``cmd`` in dvc.yaml) and ``run(cfg, inputs, outputs) -> dict`` (the numbers it wrote).

``stages/<name>.py`` hands the module to :func:`bnr.pipeline.stage.stage_main`. Nothing else in
``bnr`` imports a step, and no step imports another (tests/test_layers.py).
"""

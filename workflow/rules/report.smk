# Reports: tables and figures from the result files alone (llavakd.report), beside the paper's
# numbers in llavakd/report/paper/. Outputs are tagged for `snakemake --report`.


rule table1:
    """Table 1 in the paper's layout: paper rows, ours, deltas."""
    input:
        eval_files(STUDY.table1_models()),
        CHANCE,
    output:
        [
            report(
                REPORT_FILES.table(TABLE1, ext),
                caption="../report/table1.rst",
                category="Table 1",
            )
            for ext in TABLE_FORMATS
        ],
        [
            report(
                REPORT_FILES.table(SEEDS, ext),
                caption="../report/seeds.rst",
                category="Table 1",
            )
            for ext in ("md", "csv")
        ],
    log:
        L.log("report", "table1"),
    benchmark:
        L.timing("report", "table1")
    localrule: True
    run:
        render_for_rule("table1", STUDY, REPORTS, log[0], TABLE_FORMATS)


rule ablation_table:
    """Our ablation tables; the paper's columns are marked unavailable."""
    input:
        lambda wc: ablation_eval_files(wc.kind),
        CHANCE,
    output:
        [
            report(
                REPORT_FILES.table(REPORT_FILES.ablation("{kind}"), ext),
                caption="../report/ablation.rst",
                category="Ablations",
            )
            for ext in TABLE_FORMATS
        ],
    log:
        L.log("report", REPORT_FILES.ablation("{kind}")),
    benchmark:
        L.timing("report", REPORT_FILES.ablation("{kind}"))
    wildcard_constraints:
        kind="losses|stages",
    localrule: True
    run:
        render_for_rule(wildcards.kind, STUDY, REPORTS, log[0], TABLE_FORMATS)


rule figures_render:
    """Per-benchmark bars, Avg10 against size, training curves per loss term."""
    input:
        eval_files(STUDY.table1_models()),
        kd_run_markers(),
        CHANCE,
    output:
        [
            report(path, caption="../report/figures.rst", category="Figures")
            for path in FIGURES
            if "protocol_offset" not in path
        ],
    log:
        L.log("report", "figures"),
    benchmark:
        L.timing("report", "figures")
    localrule: True
    run:
        render_for_rule("figures", STUDY, REPORTS, log[0])


rule protocol_offset:
    """Released checkpoints scored by this harness minus the paper's numbers (config: released)."""
    input:
        eval_files(STUDY.released_models()),
    output:
        report(
            REPORT_FILES.figure(OFFSET_FIGURE),
            caption="../report/offset.rst",
            category="Figures",
        ),
        REPORT_FILES.figure(OFFSET_FIGURE, "csv"),
    log:
        L.log("report", "protocol_offset"),
    benchmark:
        L.timing("report", "protocol_offset")
    localrule: True
    run:
        render_for_rule("offset", STUDY, REPORTS, log[0])


rule agreement_report:
    """How close each student is to its teacher (baselines and LLaVA-KD alike), per benchmark."""
    input:
        AGREEMENT_FILES,
    output:
        [
            report(path, caption="../report/agreement.rst", category="Agreement")
            for path in AGREEMENT_REPORT
        ],
    log:
        L.log("report", "agreement"),
    benchmark:
        L.timing("report", "agreement")
    localrule: True
    run:
        render_for_rule("agreement", STUDY, REPORTS, log[0])


rule methods_table:
    """Distillation methods on one footing, each against ce, paired by seed (config: methods)."""
    input:
        eval_files([m for ms in STUDY.method_models().values() for m in ms]),
        METHOD_AGREEMENT_FILES,
        METHOD_RUN_MARKERS,
        CHANCE,
    output:
        [
            report(
                REPORT_FILES.table(METHODS, ext),
                caption="../report/methods.rst",
                category="Methods",
            )
            for ext in TABLE_FORMATS
        ],
        report(
            REPORT_FILES.figure(METHODS),
            caption="../report/methods.rst",
            category="Methods",
        ),
        BUDGET_REPORT,
    log:
        L.log("report", "methods"),
    benchmark:
        L.timing("report", "methods")
    localrule: True
    run:
        render_for_rule("methods", STUDY, REPORTS, log[0], TABLE_FORMATS)

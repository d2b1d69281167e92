"""llavakd's workflow: the paper's Table 1, its ablations and figures as one DAG.

    snakemake --cores all reproduce_table1                      # the tiny world (config/config.yaml)
    snakemake --cores all reproduce_table1 --configfile config/tiny-study.yaml   # 3 seeds, longer
    snakemake -n reproduce_table1 --configfile config/paper.yaml                  # plan + cost of the paper
    snakemake --executor slurm --workflow-profile profiles/slurm reproduce_table1 --configfile config/paper.yaml

Targets: reproduce_table1, ablation_losses, ablation_stages, figures, prefetch_benchmarks, all. Rules are split by
domain under workflow/rules/; the config is read once into the typed study of llavakd.study (every
problem listed at once) by llavakd.plan. Results go to results/<run>/, reports to reports/<run>/.
"""

# The default study, unless --configfile names another: Snakemake would otherwise deep-merge the
# two, and a paper run would inherit the tiny world's step counts and batch sizes.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


onstart:
    add_segment_retries()


rule reproduce_table1:
    """Table 1: teachers, baselines (PT+SFT) and LLaVA-KD students (DPT+SFT+DFT) beside the paper."""
    input:
        [REPORT_FILES.table(TABLE1, ext) for ext in TABLE_FORMATS],
        FIGURES,
        AGREEMENT_REPORT,


rule ablation_losses:
    """DPT/DFT with subsets of L_res, L_vis, L_rel."""
    input:
        [
            REPORT_FILES.table(REPORT_FILES.ablation("losses"), ext)
            for ext in TABLE_FORMATS
        ],


rule ablation_stages:
    """PT or DPT, SFT, with or without DFT."""
    input:
        [
            REPORT_FILES.table(REPORT_FILES.ablation("stages"), ext)
            for ext in TABLE_FORMATS
        ],


rule benchmark_methods:
    """Distillation methods on one footing: each against ce, paired by seed (config: methods)."""
    input:
        METHODS_REPORT,


rule prepare_data:
    """Real mode: fetch what data.manifest lists (run on a login node); tiny mode: the world."""
    input:
        PREPARED_DATA,


rule validate_data:
    """Every dataset the study trains on, checked record by record (results/<run>/data/*.report.*)."""
    input:
        DATA_REPORTS,


rule prefetch_benchmarks:
    """Real mode: fill eval.hf_home with the benchmarks' datasets (run on a login node)."""
    input:
        PREFETCHED,


rule agreement_all:
    """Every student's agreement with its teacher (reports/<run>/agreement.{md,csv})."""
    input:
        AGREEMENT_REPORT,


rule figures:
    """The paper's figures from our results."""
    input:
        FIGURES,


rule all:
    default_target: True
    input:
        rules.reproduce_table1.input,
        rules.ablation_losses.input,
        rules.ablation_stages.input,

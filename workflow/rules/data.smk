# Data: the synthetic world (tiny mode). Real mode reads data.captions/instruct/images as given.


rule world:
    """Images, the caption and instruction sets, and the ten benchmark stand-ins."""
    output:
        marker(L.world_dir()),
    log:
        L.log("world"),
    benchmark:
        L.timing("world")
    threads: res("world", "threads")
    resources:
        mem_mb=res("world", "mem_mb"),
        runtime=res("world", "runtime"),
    params:
        out=lambda wc, output: parent(output[0]),
        seed=C.world.seed,
        size=C.world.size,
    shell:
        "$LLAVAKD_PY -m llavakd.cli synth-world --out {params.out} --seed {params.seed} --size {params.size} --overwrite > {log} 2>&1"


rule prepare_data_files:
    """Real mode: download, verify and extract what data.manifest lists under data.root."""
    output:
        L.data_prepared(),
    log:
        L.log("prepare_data"),
    localrule: True
    params:
        manifest=C.data.manifest,
        root=C.data.root,
    shell:
        "$LLAVAKD_PY -m llavakd.cli prepare-data --manifest {params.manifest} --root {params.root} "
        "--done {output} > {log} 2>&1"


rule validate_data_file:
    """Every record of one dataset checked against its images; fails above data.max_bad_fraction."""
    input:
        data=PREPARED_DATA,
        processor=lambda wc: marker(STUDY.data_check(wc.dataset)["processor"]),
    output:
        json=L.data_report("{dataset}"),
        md=L.data_report("{dataset}", "md"),
    log:
        L.log("validate_data", "{dataset}"),
    benchmark:
        L.timing("validate_data", "{dataset}")
    wildcard_constraints:
        dataset="captions|instruct",
    params:
        check=lambda wc: STUDY.data_check(wc.dataset),
        out=lambda wc: L.data_report_prefix(wc.dataset),
    shell:
        "$LLAVAKD_PY -m llavakd.cli validate-data {params.check[json]} --images {params.check[images]} "
        "--processor {params.check[processor]} --template {params.check[template]} "
        "--max-length {params.check[max_length]} --max-bad-fraction {params.check[max_bad_fraction]} "
        "--out {params.out} > {log} 2>&1"

# Evaluation: one job per model and protocol scores every configured benchmark through lmms-eval (llavakd eval:
# fixed <benchmark>.json files, nothing written on failure, COMPLETE once all are there; a rerun after
# a kill reuses the benchmarks that finished, so those files are not declared outputs).


# One rule per configured protocol (eval.protocol): `evaluate` scores lmms-eval's stock tasks into
# eval/<model>/, `evaluate_paper` the paper protocol's variants into eval-paper/<model>/.
for _protocol in STUDY.protocols:

    rule:
        name:
            "evaluate" if _protocol == "lmms-eval" else f"evaluate_{_protocol}"
        input:
            unpack(eval_inputs),
        output:
            marker(L.eval_dir("{model}", _protocol)),
        log:
            L.log(L.eval_name(_protocol), "{model}"),
        benchmark:
            L.timing(L.eval_name(_protocol), "{model}")
        threads: res("eval", "threads")
        resources:
            gpu=res("eval", "gpus"),
            mem_mb=res("eval", "mem_mb"),
            runtime=lambda wc: SCHEDULE.evaluate(wc.model).minutes,
        params:
            model=lambda wc: STUDY.model_dir(wc.model),
            out=lambda wc, output: parent(output[0]),
            benchmarks=",".join(BENCHMARKS),
            world=f"--world {L.world_dir()}" if TINY else "",
            limit=f"--limit {C.eval.limit}" if C.eval.limit else "",
            batch=C.eval.batch_size,
            dtype=C.eval.dtype,
            hf_home=f"--hf-home {C.eval.hf_home}" if C.eval.hf_home else "",
            protocol=_protocol,
            pope=(
                f"--pope-questions {C.eval.pope_questions}"
                if C.eval.pope_questions and _protocol == "paper"
                else ""
            ),
            scoring=SCORING_REVISION,  # a new revision scores finished models again
        shell:
            "OMP_NUM_THREADS={threads} $LLAVAKD_PY -m llavakd.launch --gpus {resources.gpu} -- "
            "$LLAVAKD_PY -m llavakd.cli eval --model {params.model} --benchmarks {params.benchmarks} --out {params.out} "
            "{params.world} {params.limit} --batch-size {params.batch} --dtype {params.dtype} {params.hf_home} "
            "--protocol {params.protocol} {params.pope} > {log} 2>&1"


rule prefetch_benchmarks_data:
    """The configured benchmarks' datasets, downloaded into eval.hf_home for offline evaluation."""
    output:
        L.prefetch_marker(),
    log:
        L.log("prefetch_benchmarks"),
    localrule: True
    params:
        benchmarks=",".join(BENCHMARKS),
        hf_home=HF_HOME,
    shell:
        "$LLAVAKD_PY -m llavakd.cli prefetch-benchmarks --benchmarks {params.benchmarks} "
        "--hf-home {params.hf_home} --done {output} > {log} 2>&1"


rule chance:
    """Tiny mode: each stand-in's best constant answer, scored by lmms-eval (the reports' chance row)."""
    input:
        WORLD,
    output:
        L.chance_file(),
    log:
        L.log("chance"),
    benchmark:
        L.timing("chance")
    params:
        world=L.world_dir(),
        benchmarks=",".join(BENCHMARKS),
        limit=f"--limit {C.eval.limit}" if C.eval.limit else "",
    shell:
        "OMP_NUM_THREADS=1 $LLAVAKD_PY -m llavakd.cli chance --world {params.world} --out {output} "
        "--benchmarks {params.benchmarks} {params.limit} > {log} 2>&1"


rule agreement:
    """One student against its teacher: answer agreement, answer KL and visual KL per benchmark."""
    input:
        unpack(agreement_inputs),
    output:
        marker(L.agreement_dir("{model}")),
    log:
        L.log("agreement", "{model}"),
    benchmark:
        L.timing("agreement", "{model}")
    threads: res("eval", "threads")
    resources:
        gpu=res("eval", "gpus"),
        mem_mb=res("eval", "mem_mb"),
        runtime=lambda wc: SCHEDULE.agreement(wc.model).minutes,
    params:
        student=lambda wc: STUDY.model_dir(wc.model),
        teacher=lambda wc: STUDY.model_dir(
            STUDY.teacher_model(STUDY.teacher_of(parse_model(wc.model).llm))
        ),
        out=lambda wc, output: parent(output[0]),
        benchmarks=",".join(
            b.name for b in resolve(C.agreement.benchmarks or ",".join(BENCHMARKS))
        ),
        world=f"--world {L.world_dir()}" if TINY else "",
        limit=f"--limit {C.agreement.limit}" if C.agreement.limit else "",
        dtype=C.agreement.dtype or C.eval.dtype,
        hf_home=f"--hf-home {C.eval.hf_home}" if C.eval.hf_home else "",
        scoring=SCORING_REVISION,  # answers decoded as the evaluation decodes them
    shell:
        "OMP_NUM_THREADS={threads} $LLAVAKD_PY -m llavakd.launch --gpus {resources.gpu} -- "
        "$LLAVAKD_PY -m llavakd.cli agreement --student {params.student} --teacher {params.teacher} "
        "--out {params.out} --benchmarks {params.benchmarks} {params.world} {params.limit} --dtype {params.dtype} "
        "{params.hf_home} > {log} 2>&1"

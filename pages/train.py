"""Train page: training settings, Start and Stop, live curves, and the result when it ends."""

import streamlit as st

import dashboard as ui
from tlcore.advice import next_steps
from tlcore.charts import history_figure, stage_starts
from tlcore.config import CLASS_WEIGHT_LABELS, OPTIMIZER_LABELS, Status, TrainConfig
from tlcore.errors import TransferLabError
from tlcore.engines import engine

DEFAULTS = TrainConfig()
BATCH_SIZES = [8, 16, 32, 64, 128]
LEARNING_RATES = [0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
AUGMENT_VIEWS = {0: "New every epoch", 3: "3 kept (fast)", 5: "5 kept", 10: "10 kept"}
FINE_TUNE_RATES = [None, 0.000001, 0.000003, 0.00001, 0.00003, 0.0001, 0.0003, 0.001]


def duration(seconds) -> str:
    seconds = int(round(seconds or 0))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def curves(history, best_epoch=None) -> None:
    if not history.get("loss"):
        st.caption(":material/show_chart: The accuracy and loss curves appear here after the first epoch.")
        return
    starts = {"fine-tuning": epoch for stage, epoch in stage_starts(history.get("stages") or []).items()
              if stage == "fine-tune"}
    left, right = st.columns(2)
    left.plotly_chart(history_figure(history, "accuracy", best_epoch=best_epoch, stage_starts=starts), key="accuracy_chart")
    right.plotly_chart(history_figure(history, "loss", best_epoch=best_epoch, stage_starts=starts), key="loss_chart")


def live() -> None:
    """Redrawn every second while the training runs; the rest of the page stays as it is."""
    job = ui.current_job()
    state = job.snapshot() if job is not None else None
    if state is None or state.done:
        st.rerun()
    jobs = engine()
    # Place 0: a worker took it after its status was read; it is starting, not waiting.
    if state.status == Status.QUEUED and (place := jobs.position(job.id)):
        start = jobs.estimated_start(job.id)
        when = f" It should start in about {duration(start)}." if start else ""
        st.info(
            f"Your training is waiting in line, place {place}. This server trains {jobs.workers} at a time; "
            f"yours starts by itself when a place is free.{when}",
            icon=":material/hourglass_top:",
        )
    else:
        st.markdown(f"**{ui.job_line(job, state)}**")
        if state.steps:
            unit = "images" if state.phase == "extracting features" else "batches"
            left = f", about {duration(state.eta_seconds)} left in this step" if state.eta_seconds is not None else ""
            st.progress(min(state.step / state.steps, 1.0), text=f"{state.step} of {state.steps} {unit}{left}")
        else:
            st.progress(0.0, text="Getting ready…")
    if not ui.owns_job():
        st.caption("This training was started by someone else (or in another browser tab). "
                   "Start yours above: it waits in line and begins as soon as this one ends.")
    elif st.button("Stop training", icon=":material/stop_circle:", key="stop"):
        engine().stop(job.id)
        st.toast("Stopping after the current batch; the model trained so far is kept.")
    curves(state.history)


def result(job, state) -> None:
    """What the user sees once the training has ended."""
    ui.adopt_finished(job, state)
    if state.status == Status.FINISHED:
        st.success(f"Training finished in {duration(state.seconds)}.", icon=":material/check_circle:")
        if state.unreadable:
            st.warning(ui.plain(state.message), icon=":material/warning:")
    elif state.status == Status.STOPPED:
        st.warning(ui.plain(state.message or "Training was stopped."), icon=":material/stop_circle:")
    else:
        st.error(ui.plain(state.message or "Training failed."), icon=":material/error:")
    history, final = state.history, state.final
    if final.get("val_accuracy") is not None:
        epochs = len(history.get("val_accuracy", []))
        kept = state.best_epoch or epochs
        numbers = st.columns(4)
        numbers[0].metric("Validation accuracy", f"{final['val_accuracy']:.1%}",
                          help="Of the saved model, on images it never trained on.")
        numbers[1].metric("Training accuracy", f"{final['accuracy']:.1%}" if "accuracy" in final else "–")
        numbers[2].metric("Epochs", epochs)
        numbers[3].metric("Saved model", f"epoch {kept}",
                          help="Early stopping kept the epoch with the lowest validation loss." if state.best_epoch
                          else "The model as it was after the last epoch.")
        if state.best_epoch:
            st.caption(f"Early stopping put back the weights of epoch {state.best_epoch} (the dashed line), "
                       "the one with the lowest validation loss; the figures above are that model's.")
        curves(history, state.best_epoch)
        advice(final.get("accuracy"), final["val_accuracy"])
    if job.run_folder.has_model:
        st.subheader("Take the model with you")
        st.download_button(
            "Download the model with its class names (.zip)",
            data=job.run_folder.bundle,
            file_name=f"{job.run_dir.name}.zip",
            mime="application/zip",
            icon=":material/download:",
        )
        st.caption("Load it in Python with `keras.saving.load_model(path)`; it holds only built-in Keras "
                   "layers and takes raw RGB images of any size. labels.json lists the classes in output order; "
                   "config.json and history.json record how it was trained.")


def past_result(info) -> None:
    """A training this server is not running, named in the address bar: most often one a restart interrupted."""
    history = info.history_record
    if info.status == Status.INTERRUPTED:
        saved = "The model was saved." if info.has_model else "No model was saved."
        st.warning(f"This training was interrupted (the server stopped or restarted) after {history.epochs} "
                   f"epoch(s). {saved} Start it again above.", icon=":material/warning:")
    else:
        st.info(f"This training {ui.plain(info.status)}: {ui.plain(info.message or 'see the Runs page.')}",
                icon=":material/info:")
    if history.epochs:
        curves(info.history, history.best_epoch)


def advice(train_accuracy, val_accuracy) -> None:
    st.markdown(
        "**What next?** " + " ".join(next_steps(train_accuracy, val_accuracy)) + "\n\n"
        "- **Evaluate**: which classes get confused, and the images the model got wrong.\n"
        "- **Predict**: try it on new pictures.\n"
        "- **Runs**: compare this training with others, for example another cut layer or dropout."
    )


ui.page_setup()
st.title("Train")

job = ui.current_job()
source = st.session_state.get(ui.DATA_SOURCE)
state = job.snapshot() if job is not None else None
running = state is not None and not state.done
busy = running and ui.owns_job()  # someone else's training does not stop this user queueing one

for name in ui.TRAIN_SETTINGS:
    st.session_state.setdefault(ui.KEEP + name, getattr(DEFAULTS, name))
# A past run's settings may hold a rate none of the sliders offers.
for key, offered in (("learning_rate", LEARNING_RATES), ("fine_tune_learning_rate", FINE_TUNE_RATES)):
    if st.session_state[ui.KEEP + key] not in offered:
        st.session_state[ui.KEEP + key] = getattr(DEFAULTS, key) if key == "learning_rate" else None

with st.container(border=True):
    row = st.columns(4)
    epochs = row[0].number_input(
        "Epochs", min_value=1, max_value=500, key="keep.epochs", disabled=busy,
        help="How many times the model sees every training image. More epochs learn more, up to a point.",
    )
    batch_size = row[1].selectbox(
        "Batch size", BATCH_SIZES, key="keep.batch_size", disabled=busy,
        help="How many images are looked at before each small correction. 32 is a good default.",
    )
    optimizer = row[2].selectbox(
        "Optimizer", list(OPTIMIZER_LABELS), format_func=OPTIMIZER_LABELS.get, key="keep.optimizer", disabled=busy,
        help="The method that adjusts the head after each batch.",
    )
    learning_rate = row[3].select_slider(
        "Learning rate", LEARNING_RATES, key="keep.learning_rate", format_func=lambda v: f"{v:g}", disabled=busy,
        help="How big each correction is. Too high and training jumps around; too low and it crawls. 0.001 is a safe start.",
    )
    row = st.columns(4)
    augment = row[0].checkbox(
        "Augment images", key="keep.augment", disabled=busy,
        help="Shows the model randomly flipped, rotated, zoomed and shifted copies, so it copes with new "
        "pictures better.",
    )
    kept = st.session_state[ui.KEEP + "augment_views"]  # a past run's setting may be none of the usual ones
    augment_views = row[1].selectbox(
        "Copies", sorted({*AUGMENT_VIEWS, kept}), format_func=lambda n: AUGMENT_VIEWS.get(n, f"{n} kept"),
        key="keep.augment_views",
        disabled=busy or not augment,
        help="Augmented copies of each training image. New copies every epoch give the most variety but run "
        "the whole backbone on every image in every epoch. A few copies per image, made once and kept, "
        "train several times faster.",
    )
    early_stopping = row[2].checkbox(
        "Stop early", key="keep.early_stopping", disabled=busy,
        help="Ends training when validation loss stops improving, and keeps the best epoch.",
    )
    patience = row[3].number_input(
        "Patience (epochs)", min_value=1, max_value=50, key="keep.patience", disabled=busy or not early_stopping,
        help="How many epochs without improvement before stopping early.",
    )
    if augment and not augment_views:
        st.caption(
            ":material/schedule: Augmentation costs time: every epoch runs the whole backbone on every image "
            "again, instead of once at the start, so training is often 10 times slower or more. "
            "A few kept copies per image are much faster."
        )
    elif augment:
        st.caption(
            f":material/bolt: The backbone runs once over {augment_views} augmented copies of each training image; "
            "the epochs take turns with them. The copies are kept, so training again is quick."
        )
    with st.expander("Advanced"):
        row = st.columns(3)
        val_split = row[0].slider(
            "Validation share", min_value=0.05, max_value=0.5, step=0.05, key="keep.val_split", disabled=busy,
            help="Share of each class held out to measure the model, when the dataset has no validation folder.",
        )
        seed = row[1].number_input(
            "Random seed", min_value=0, max_value=2**31 - 1, key="keep.seed", disabled=busy,
            help="The same seed gives the same split and the same training, so runs can be compared fairly.",
        )
        class_weights = row[2].selectbox(
            "Class weights", list(CLASS_WEIGHT_LABELS), format_func=CLASS_WEIGHT_LABELS.get, key="keep.class_weights",
            disabled=busy,
            help="When some classes have far fewer images, balanced weights make each class count the same, "
            "so the model does not just favour the big classes.",
        )

config = ui.model_config()
with st.expander("Then fine-tune the top of the backbone (a second stage)", icon=":material/tune:"):
    st.caption("Once the head has trained, the last blocks of the backbone can learn too, at a lower learning "
               "rate: the TensorFlow tutorial's second step, often a few points more accuracy. The blocks below "
               "stay frozen and their output is computed once per image, so this stays fast.")
    remembered = st.session_state.get(ui.KEEP + "fine_tune_from") or ""
    if ui.KEEP + "fine_tune_on" not in st.session_state:
        st.session_state[ui.KEEP + "fine_tune_on"] = bool(remembered or st.session_state.get(ui.KEEP + "fine_tune_layers"))
    tuning = st.toggle("Fine-tune after the head has trained", key="keep.fine_tune_on", disabled=busy)
    blocks = {}
    if tuning:  # listing the blocks builds the backbone: only when asked, so the page opens at once
        from tlcore.model import fine_tune_options

        try:
            blocks = dict(fine_tune_options(config))
        except TransferLabError:
            blocks = {}
    options = ["", *blocks, *([remembered] if remembered and remembered not in blocks else [])]
    row = st.columns(4)
    fine_tune_from = row[0].selectbox(
        "Fine-tune", options, key="keep.fine_tune_from", disabled=busy or not tuning,
        format_func=lambda name: "No fine-tuning" if not name else f"Everything after {name} ({blocks.get(name, '?')} layers)",
        help="Which blocks of the backbone learn in the second stage: the later, the fewer layers and the safer.",
    )
    fine_tune_layers = row[1].number_input(
        "…or the top N layers", min_value=0, max_value=1000, key="keep.fine_tune_layers",
        disabled=busy or not tuning or bool(fine_tune_from),
        help="Unfreeze at least this many of the last layers (whole blocks, so maybe a few more). 0: use the choice on the left.",
    )
    fine_tune_epochs = row[2].number_input(
        "Fine-tuning epochs", min_value=0, max_value=200, key="keep.fine_tune_epochs", disabled=busy,
    )
    fine_tune_learning_rate = row[3].select_slider(
        "Fine-tuning learning rate", FINE_TUNE_RATES, key="keep.fine_tune_learning_rate", disabled=busy,
        format_func=lambda v: "first stage's / 10" if v is None else f"{v:g}",
        help="Small, so the pretrained layers change gently. The tutorial uses the first stage's divided by 10.",
    )
st.caption(f"Model: {ui.describe_model(config, inline=True)} · change it on the Model page.")

if not source:
    st.info("Choose a dataset first, on the Data page.", icon=":material/info:")
    st.page_link("pages/data.py", label="Go to Data", icon=":material/arrow_forward:")
if st.button("Start training", type="primary", icon=":material/play_arrow:", disabled=busy or not source):
    try:
        train_config = TrainConfig(
            epochs=int(epochs),
            batch_size=int(batch_size),
            learning_rate=float(learning_rate),
            optimizer=optimizer,
            augment=augment,
            augment_views=int(augment_views) if augment else 0,
            early_stopping=early_stopping,
            patience=int(patience),
            val_split=float(val_split),
            seed=int(seed),
            class_weights=class_weights,
            fine_tune_from=(fine_tune_from or "") if tuning else "",
            fine_tune_layers=0 if fine_tune_from or not tuning else int(fine_tune_layers),
            fine_tune_epochs=int(fine_tune_epochs),
            fine_tune_learning_rate=fine_tune_learning_rate,
        )
        job = engine().submit(source, config, train_config, runs_dir=ui.runs_dir(), work_dir=ui.work_dir())
    except TransferLabError as error:
        ui.show_error(error)
    else:
        ui.follow(job)
        st.rerun()

if running:
    st.fragment(live, run_every=ui.POLL_SECONDS)()
elif job is not None and ui.owns_job():
    result(job, state)
elif job is None and (past := ui.run_from_address()) is not None:
    past_result(past)

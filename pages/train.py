"""Train page: training settings, Start and Stop, live curves, and the result when it ends."""

import streamlit as st

import ui
from tlcore import runs
from tlcore.charts import history_figure
from tlcore.errors import TransferLabError
from tlcore.jobs import manager
from tlcore.training import TrainConfig

DEFAULTS = TrainConfig()
BATCH_SIZES = [8, 16, 32, 64, 128]
LEARNING_RATES = [0.00001, 0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
AUGMENT_VIEWS = {0: "New every epoch", 3: "3 kept (fast)", 5: "5 kept", 10: "10 kept"}
OPTIMIZERS = {"adam": "Adam (recommended)", "rmsprop": "RMSprop (the classic lab)", "sgd": "SGD (plain gradient descent)"}


def duration(seconds) -> str:
    seconds = int(round(seconds or 0))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def curves(history) -> None:
    if not history.get("loss"):
        st.caption(":material/show_chart: The accuracy and loss curves appear here after the first epoch.")
        return
    left, right = st.columns(2)
    left.plotly_chart(history_figure(history, "accuracy"), key="accuracy_chart")
    right.plotly_chart(history_figure(history, "loss"), key="loss_chart")


def live() -> None:
    """Redrawn every second while the training runs; the rest of the page stays as it is."""
    job = ui.current_job()
    state = job.snapshot() if job is not None else None
    if state is None or state.done:
        st.rerun()
    if state.status == runs.QUEUED:
        place = manager().position(job.run_dir.name)
        st.info(
            f"Your training is waiting in line, place {place}. Only one training runs at a time on this "
            "server; yours starts by itself as soon as the one before it ends.",
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
        manager().stop(job.run_dir.name)
        st.toast("Stopping after the current batch; the model trained so far is kept.")
    curves(state.history)


def result(job, state) -> None:
    """What the user sees once the training has ended."""
    ui.adopt_finished(job, state)
    if state.status == runs.FINISHED:
        st.success(f"Training finished in {duration(state.seconds)}.", icon=":material/check_circle:")
    elif state.status == runs.STOPPED:
        st.warning(state.message or "Training was stopped.", icon=":material/stop_circle:")
    else:
        st.error(state.message or "Training failed.", icon=":material/error:")
    history = state.history
    if history.get("val_accuracy"):
        val, train = history["val_accuracy"], history.get("accuracy", [])
        best = max(range(len(val)), key=val.__getitem__)
        numbers = st.columns(4)
        numbers[0].metric("Validation accuracy", f"{val[-1]:.1%}", help="On images the model never trained on.")
        numbers[1].metric("Training accuracy", f"{train[-1]:.1%}" if train else "–")
        numbers[2].metric("Best validation accuracy", f"{val[best]:.1%}", help=f"Reached at epoch {best + 1}.")
        numbers[3].metric("Epochs", len(val))
        curves(history)
        advice(train[-1] if train else None, val[-1])
    model_file = job.run_dir / runs.MODEL_FILE
    if model_file.is_file():
        st.subheader("Take the model with you")
        st.download_button(
            "Download the model with its class names (.zip)",
            data=lambda: runs.export_bundle(job.run_dir),
            file_name=f"{job.run_dir.name}.zip",
            mime="application/zip",
            icon=":material/download:",
        )
        st.caption("Load it in Python with `keras.saving.load_model(path)` after `import tlcore.model`; "
                   "it takes raw RGB images of any size. labels.json lists the classes in output order; "
                   "config.json and history.json record how it was trained.")


def advice(train_accuracy, val_accuracy) -> None:
    tips = []
    if val_accuracy < 0.7:
        tips.append("Accuracy is low: try more epochs, a later cut layer, or check on the Data page that the classes really look different.")
    if train_accuracy is not None and train_accuracy - val_accuracy > 0.1:
        tips.append("Training accuracy is well above validation accuracy (overfitting): try more dropout, augmentation, or more images.")
    if not tips:
        tips.append("The model tells the classes apart well on images it never trained on.")
    st.markdown(
        "**What next?** " + " ".join(tips) + "\n\n"
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
        "Optimizer", list(OPTIMIZERS), format_func=OPTIMIZERS.get, key="keep.optimizer", disabled=busy,
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
        row = st.columns(2)
        val_split = row[0].slider(
            "Validation share", min_value=0.05, max_value=0.5, step=0.05, key="keep.val_split", disabled=busy,
            help="Share of each class held out to measure the model, when the dataset has no validation folder.",
        )
        seed = row[1].number_input(
            "Random seed", min_value=0, max_value=2**31 - 1, key="keep.seed", disabled=busy,
            help="The same seed gives the same split and the same training, so runs can be compared fairly.",
        )

config = ui.model_config()
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
        )
        job = manager().submit(source, config, train_config, runs_dir=ui.runs_dir(), work_dir=ui.work_dir())
    except TransferLabError as error:
        ui.show_error(error)
    else:
        ui.follow(job)
        st.rerun()

if running:
    st.fragment(live, run_every=ui.POLL_SECONDS)()
elif job is not None and ui.owns_job():
    result(job, state)

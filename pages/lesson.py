"""The lesson: the two phases of training in seven steps, each on a result that ships with twophase (?step=N)."""

import streamlit as st

import app_common as ui
from twophase_core.interfaces import lesson

STEPS = lesson.steps()


@st.cache_data(show_spinner=False)
def handout() -> str:
    return lesson.handout_html()


try:
    n = int(st.query_params.get("step", "1"))
except ValueError:
    n = 1
n = min(max(n, 1), len(STEPS))
st.query_params["step"] = str(n)
step = STEPS[n - 1]


def navigation() -> None:
    prev, nxt, _, out = st.columns([1, 1, 2, 2])
    if prev.button("Previous", icon=":material/arrow_back:", disabled=n == 1, key="lesson_prev", width="stretch"):
        st.query_params["step"] = str(n - 1)
        st.rerun()
    if nxt.button("Next", icon=":material/arrow_forward:", disabled=n == len(STEPS), key="lesson_next",
                  type="primary", width="stretch"):
        st.query_params["step"] = str(n + 1)
        st.rerun()
    out.download_button("Handout (one HTML file, opens offline)", data=handout(), file_name="twophase-lesson.html",
                        mime="text/html", icon=":material/download:", key="lesson_handout")


st.caption(f"Lesson · step {n} of {len(STEPS)}")
st.title(step.title)
st.progress(n / len(STEPS))
if ui.presenting():  # on a projector Next stays above the fold, over the figure
    navigation()
st.write(step.words)
ui.show_figure(step.figure(), key=f"lesson_{step.key}")
st.markdown(f"**Notice.** {step.notice}")
st.markdown(f"**Ask the class.** {step.question}")
if step.answer:
    with st.expander("An answer"):
        st.write(step.answer)

if step.live is not None:
    seconds = step.live.seconds()
    wait = f"about {seconds:.0f} s" if seconds is not None else "a minute or so"
    st.caption(f"Try it live: {step.live.what}. It trains here, on this machine: {wait} on a 2-core laptop "
               "(measured when the results that ship with twophase were made).")
    if st.button(f"Try it live: {step.live.what}", icon=":material/play_arrow:", key=f"live_{step.key}"):
        rec = ui.job_manager().submit(step.live.config())
        ui.open_run(step.live.kind, rec.id)

if not ui.presenting():
    navigation()
st.caption("Definitions: docs/science.md in the twophase source. Every step's result is a real run of the engine "
           "that ships with the package; `twophase gallery verify` computes them again.")

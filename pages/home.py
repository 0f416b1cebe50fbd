"""Home: what the two phases are, the lesson and the demo one click away (both above the fold, on a projector too)."""

import streamlit as st

import app_common as ui
from twophase_core.experiments.presets import preset
from twophase_core.interfaces import lesson as L

st.title("Two-phase learning dynamics")
st.markdown("An interactive lab for *New Evidence of the Two-Phase Learning Dynamics of Neural Networks* "
            "(Zhou, Yang, Sugiyama, Yan, [arXiv 2505.13900](https://arxiv.org/abs/2505.13900)).")

lesson, demo = st.columns(2, gap="large")
if lesson.button("Start the lesson", type="primary", icon=":material/school:", key="start_lesson", width="stretch"):
    st.switch_page(ui.PAGE_FILES["lesson"], query_params={"step": "1"})
lesson.caption("Seven steps through the two phases, each on a result already computed; one question per step.")
if demo.button("Open the demo", icon=":material/play_arrow:", key="run_demo", width="stretch"):
    jm = ui.job_manager()
    recs = {kind: jm.submit(preset("demo", kind)) for kind in ("chaos", "cone", "linear")}
    for kind, rec in recs.items():
        st.session_state[f"run_{kind}"] = rec.id
    ui.open_run("chaos", recs["chaos"].id)
demo.caption("The demo's Chaos, Cone and linearised runs ship with twophase and open at once; change any setting on "
             "their pages to train a variant here.")

st.markdown(
    "Training a neural network with SGD goes through **two phases**. "
    "In the first, **chaotic** phase, a tiny nudge matters: add noise of size about 1e-7 to every weight "
    "at iteration *t0*, train the nudged copy and an untouched copy on exactly the same minibatches, and "
    "they end up as two different networks, with a loss barrier between them and different answers on "
    "many test points (the **Chaos Effect**). "
    "After a short transition, a few hundred iterations for a ResNet-20 on CIFAR-10, the same nudge no "
    "longer matters: the two copies stay together. "
    "The **Cone Effect** shows the same change in the neural tangent kernel, the matrix that says how a "
    "gradient step on one input moves the predictions on another. "
    "Early on the kernel moves fast and far from where it started; in the second, **stable** phase it "
    "keeps moving, but inside a narrow cone seen from its starting point H(theta_0). "
    "**Linearised training** makes this practical: freezing the kernel at time *t* and training the "
    "linear model only works well once *t* is past the chaotic phase."
)

st.divider()
c = st.columns(4)
c[0].page_link(ui.PAGE_FILES["chaos"], label="Chaos Effect", icon=":material/scatter_plot:")
c[0].caption("Perturb at t0, compare at t1: parameter distance C, loss barrier B, disagreement D.")
c[1].page_link(ui.PAGE_FILES["cone"], label="Cone Effect", icon=":material/change_history:")
c[1].caption("The empirical NTK along training: distances, velocity, and the cone in 3-D.")
c[2].page_link(ui.PAGE_FILES["linear"], label="Linearised training", icon=":material/show_chart:")
c[2].caption("Train the Taylor model from theta_t: accuracy versus the switch time t.")
c[3].page_link(ui.PAGE_FILES["runs"], label="Runs", icon=":material/list:")
c[3].caption("Every run with its name, settings and status: open, compare, rerun, cancel or delete.")

# The Chaos Effect at a glance, from the result that ships with twophase (nothing trains). Drawn here, on the page
# every visit starts from, it also loads the browser's chart library before the first click: a demo's first live
# curve then appears at once instead of after seconds of script loading.
st.divider()
try:
    glance = L.step(2)
    fig = glance.figure()
except LookupError:  # a source tree whose gallery was never built
    pass
else:
    st.subheader("At a glance: " + glance.title)
    ui.show_figure(fig, key="home_glance")
    st.caption(glance.notice + " The Lesson walks through it step by step.")

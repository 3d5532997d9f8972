"""What a converted model does, measured: the op report (:mod:`.op_report`), spike activity
(:mod:`.activity`), fidelity against the float model (:mod:`.fidelity`), and the accelerator cost
model (:mod:`.accelerator`)."""

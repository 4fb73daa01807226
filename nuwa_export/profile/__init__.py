"""``nuwa-profile``'s library: per-stage timings of an export over repeated runs (:mod:`.runs`),
their table and chart (:mod:`.report`), trtexec per-layer profiles (:mod:`.trtexec`) and the
paper's FLOPs model (:mod:`.flops`)."""

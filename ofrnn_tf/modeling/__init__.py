"""The model of the paper: M_map (Eq. 1–3), M_att (Eq. 4–5), M_pred (Eq. 6–10)."""

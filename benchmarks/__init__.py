"""`maest bench`: how fast MAEST runs on this machine and what each speed-up costs in accuracy (`measure`: the
measurements, returned as one results dict; `report`: that dict as a text or Markdown table). The results files of
`make bench` live beside this code (results.json, results.md)."""

# The training run of the shipped CInA-ZS, 2026-12-07 (fourth session), as it was run (2-core CPU, 2 threads).
cina train --out ft5k.pt --init-from shipped --inputs normal-scores --balance-gamma median \
  --families setoguchi er semi --er-covariates 2 256 --er-covariates-log --treated-share 0.05 0.6 \
  --binary-share 0 0.5 --heavy-tails --assignment-strength 1 3 --propensity-clip 0.01 \
  --n-min 100 --n-max 5000 --n-draw step --unit-budget 12800 --steps 1500 --lr 3e-4 --seed 5 \
  --checkpoint-every 100 --time-limit 4200 --device cpu --export cina_zs_ate_5k.pt --json

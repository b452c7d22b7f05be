#!/usr/bin/env python3
"""Helpers of scripts/gpu-check.sh. Each call prints one JSON object on stdout and never a
traceback: a missing or malformed input becomes {"error": "..."}. Standard library only.

  losses CPU_STEPS_CSV CUDA_STEPS_CSV   compare the per-step losses of two runs
  bench VOXBRIDGE_JSON TORCH_JSON CONFIG PRECISION
                                        one bench row: voxbridge vs torch_anchor.py, with ratios
  jsonline FILE CHECK                   the line of FILE that is a JSON object with "check": CHECK
  npy SAFETENSORS KEY OUT_NPY           write tensor KEY ([N, 1, V] or [N, V] float32) as an (N, V) .npy
  close OURS THEIRS PREFIX RTOL KEY...  compare OURS[KEY] with THEIRS[PREFIX.KEY] (float32
                                        safetensors): max |diff| <= RTOL x max |THEIRS|
"""
import array
import csv
import json
import math
import statistics
import struct
import sys

# Loss tolerances, CUDA vs CPU, same seed and data (the CUDA run's f32 matmuls use TF32 tensor
# cores: ~1e-3 relative per matmul, measured 8.9e-4 on gradients of a small graph on the H200).
# Step 0 sees only forward-pass rounding; later steps let the two trajectories drift apart, so
# the median over the run gets a wider bound, and nothing may be NaN or infinite.
FIRST_STEP_RTOL = 1e-2
MEDIAN_RTOL = 5e-2


def read_losses(path):
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    return [float(r['loss']) for r in rows]


def losses(cpu_csv, cuda_csv):
    cpu, cuda = read_losses(cpu_csv), read_losses(cuda_csv)
    n = min(len(cpu), len(cuda))
    if n == 0:
        return {'error': f'no steps to compare ({len(cpu)} CPU, {len(cuda)} CUDA)'}
    finite = all(math.isfinite(x) for x in cpu[:n] + cuda[:n])
    rel = [abs(a - b) / max(abs(b), 1e-6) for a, b in zip(cuda[:n], cpu[:n])]
    ok = finite and len(cpu) == len(cuda) and rel[0] <= FIRST_STEP_RTOL and statistics.median(rel) <= MEDIAN_RTOL
    return {
        'pass': ok, 'steps_cpu': len(cpu), 'steps_cuda': len(cuda), 'finite': finite,
        'first_step_rel_diff': rel[0], 'median_rel_diff': statistics.median(rel), 'max_rel_diff': max(rel),
        'max_rel_diff_at_step': rel.index(max(rel)), 'final_loss_cpu': cpu[n - 1], 'final_loss_cuda': cuda[n - 1],
        'tolerance': {'first_step': FIRST_STEP_RTOL, 'median': MEDIAN_RTOL},
    }


def first_record(path):
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, list):
        if not data:
            raise ValueError(f'{path} holds an empty list')
        data = data[0]
    if not isinstance(data, dict):
        raise ValueError(f'{path} holds no JSON object')
    return data


def pick(record, *names):
    for name in names:
        if isinstance(record.get(name), (int, float)):
            return record[name]
    return None


def bench(vox_json, torch_json, config, precision):
    out = {'config': config, 'precision': precision}
    try:
        v = first_record(vox_json)
        out.update(voxbridge_ms=pick(v, 'median_ms'), voxbridge_batch=pick(v, 'batch'),
                   voxbridge_params=pick(v, 'parameters', 'params'),
                   voxbridge_samples_per_s=pick(v, 'samples_per_second', 'samples_per_s'),
                   voxbridge_tflops=pick(v, 'tflops', 'achieved_tflops'),
                   voxbridge_peak=next((v[k] for k in sorted(v) if 'peak' in k), None))
    except (OSError, ValueError, KeyError) as e:
        out['voxbridge_error'] = str(e)
    try:
        t = first_record(torch_json)
        out.update(torch_ms=pick(t, 'median_ms'), torch_batch=pick(t, 'batch'), torch_params=pick(t, 'params'),
                   torch_samples_per_s=pick(t, 'samples_per_s'), torch_peak_gib=pick(t, 'peak_mem_gib'),
                   torch_device=t.get('device_name'), torch_version=t.get('torch'))
    except (OSError, ValueError, KeyError) as e:
        out['torch_error'] = str(e)
    vm, tm = out.get('voxbridge_ms'), out.get('torch_ms')
    if vm and tm:
        # time_ratio < 1: voxbridge's step is faster; speedup > 1 likewise.
        out['time_ratio_voxbridge_over_torch'] = vm / tm
        out['speedup_vs_torch'] = tm / vm
    vs, ts = out.get('voxbridge_samples_per_s'), out.get('torch_samples_per_s')
    if vs and ts:
        out['samples_per_s_ratio'] = vs / ts
    if out.get('voxbridge_batch') and out.get('torch_batch') and out['voxbridge_batch'] != out['torch_batch']:
        out['note'] = 'batch sizes differ: compare samples/s, not ms/step'
    return out


def jsonline(path, check):
    with open(path, errors='replace') as f:
        for line in f:
            line = line.strip()
            if line.startswith('{'):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get('check') == check:
                    return record
    return {'error': f'no JSON line with "check": "{check}" in {path}'}


def read_safetensors(path):
    """{name: (shape, array('f'))} of a safetensors file's float32 tensors."""
    with open(path, 'rb') as f:
        blob = f.read()
    (n,) = struct.unpack('<Q', blob[:8])
    header = json.loads(blob[8:8 + n])
    tensors = {}
    for name, info in header.items():
        if name == '__metadata__' or info.get('dtype') != 'F32':
            continue
        start, end = info['data_offsets']
        values = array.array('f')
        values.frombytes(blob[8 + n + start:8 + n + end])
        if sys.byteorder != 'little':
            values.byteswap()
        tensors[name] = (info['shape'], values)
    return tensors


def npy(path, key, out):
    shape, values = read_safetensors(path)[key]
    rows, cols = shape[0], math.prod(shape[1:])
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (rows, cols)
    header += ' ' * (63 - (10 + len(header)) % 64) + '\n'
    with open(out, 'wb') as f:
        f.write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(header)) + header.encode('latin1'))
        f.write(values.tobytes())
    return {'wrote': out, 'shape': [rows, cols]}


def close(ours, theirs, prefix, rtol, keys):
    got, want = read_safetensors(ours), read_safetensors(theirs)
    rtol = float(rtol)
    rows = {}
    for key in keys:
        (gs, g), (ws, w) = got[key], want[f'{prefix}.{key}']
        if math.prod(gs) != math.prod(ws):
            rows[key] = {'pass': False, 'error': f'shape {gs} vs {ws}'}
            continue
        scale = max(max((abs(v) for v in w), default=0.0), 1e-6)
        worst = max((abs(a - b) if math.isfinite(a) else math.inf for a, b in zip(g, w)), default=0.0)
        rows[key] = {'max_abs_diff': worst, 'scale': scale, 'rel': worst / scale, 'pass': worst <= rtol * scale}
    return {'rtol': rtol, 'pass': all(r['pass'] for r in rows.values()), 'outputs': rows}


def main(argv):
    try:
        if argv[:1] == ['losses'] and len(argv) == 3:
            return losses(argv[1], argv[2])
        if argv[:1] == ['bench'] and len(argv) == 5:
            return bench(*argv[1:])
        if argv[:1] == ['jsonline'] and len(argv) == 3:
            return jsonline(argv[1], argv[2])
        if argv[:1] == ['npy'] and len(argv) == 4:
            return npy(*argv[1:])
        if argv[:1] == ['close'] and len(argv) >= 6:
            return close(argv[1], argv[2], argv[3], argv[4], argv[5:])
        return {'error': f'usage: {__doc__.splitlines()[3].strip()} … (got {argv})'}
    except (OSError, ValueError, KeyError) as e:
        return {'error': f'{type(e).__name__}: {e}'}


def clean(x):
    """JSON has no NaN or infinity: those become strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x


if __name__ == '__main__':
    print(json.dumps(clean(main(sys.argv[1:])), allow_nan=False, default=str))

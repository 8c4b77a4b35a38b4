// The tagi serve page: plain browser JavaScript, no build step, no network access beyond this server.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { adapter: null, tasks: [], auth: false };

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) h.Authorization = "Bearer " + token;
  return h;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

async function api(method, path, body) {
  const res = await fetch(path, { method, headers: headers(), body: body ? JSON.stringify(body) : undefined });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && data.error.message) || res.status + " " + res.statusText);
  return data;
}

async function loadHealth() {
  const h = await api("GET", "/healthz");
  state.auth = h.auth;
  $("auth").hidden = !h.auth;
  $("health").textContent = "base model " + h.base_model + " · " + h.adapters_cached + " adapters cached";
  $("max-tokens").placeholder = String(h.default_max_tokens);
  $("max-tokens").max = String(h.max_tokens);
}

async function loadTasks() {
  try {
    state.tasks = (await api("GET", "/v1/tasks")).tasks;
  } catch (e) {
    return; // a token may be needed first; the list is a convenience
  }
  for (const t of state.tasks) {
    const o = document.createElement("option");
    o.value = t.name;
    o.textContent = t.name.replace(/^builtin_/, "").replace(/_/g, " ");
    $("task").appendChild(o);
  }
}

function pickTask() {
  const t = state.tasks.find((x) => x.name === $("task").value);
  if (!t) return;
  $("instruction").value = t.definition;
  $("inputs").value = t.inputs.join("\n");
}

async function makeAdapter() {
  const instruction = $("instruction").value;
  const body = { instruction };
  const t = state.tasks.find((x) => x.name === $("task").value);
  if ($("use-examples").checked && t && t.definition === instruction) body.pos_examples = t.pos_examples;
  $("make").disabled = true;
  status("generating the adapter…");
  try {
    const a = await api("POST", "/v1/adapters", body);
    state.adapter = a;
    $("adapter").hidden = false;
    $("adapter-id").textContent = a.id;
    const made = (a.cached ? "already made (in " : "made in ") + (a.generation_s * 1000).toFixed(0) + " ms" +
      (a.cached ? ")" : "");
    $("adapter-info").textContent = made + " · rank " + a.rank +
      " · " + (a.bytes / 1024).toFixed(0) + " KiB" + (a.instruction_truncated ? " · instruction truncated" : "");
    $("run").disabled = false;
    snippets(a.id);
    status("adapter ready");
  } catch (e) {
    status(e.message, true);
  } finally {
    $("make").disabled = false;
  }
}

async function complete(model, input) {
  const body = { model, prompt: input };
  const mt = parseInt($("max-tokens").value, 10);
  if (mt > 0) body.max_tokens = mt;
  if (model === "base") body.instruction = state.adapter.instruction;
  const r = await api("POST", "/v1/completions", body);
  return r.choices[0].text;
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

async function fill(td, promise) {
  try {
    const text = await promise;
    td.textContent = text === "" ? "(empty)" : text;
    td.className = "done";
  } catch (e) {
    td.textContent = "error: " + e.message;
    td.className = "error";
  }
}

async function run() {
  const inputs = $("inputs").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!inputs.length) return status("type at least one input", true);
  const tbody = $("results").querySelector("tbody");
  tbody.innerHTML = "";
  $("run").disabled = true;
  status("running " + inputs.length + " inputs…");
  const jobs = [];
  for (const x of inputs) {
    const tr = document.createElement("tr");
    cell(tr, x);
    const mine = cell(tr, "…", "pending adapter-out");
    const base = cell(tr, "…", "pending base-out");
    tbody.appendChild(tr);
    // all requests go out at once: the server decodes them together, whatever their adapter
    jobs.push(fill(mine, complete(state.adapter.id, x)).then(() => mine.classList.add("adapter-out")));
    jobs.push(fill(base, complete("base", x)).then(() => base.classList.add("base-out")));
  }
  await Promise.all(jobs);
  $("run").disabled = false;
  status("done");
}

async function download(ev) {
  ev.preventDefault();
  const id = state.adapter.id;
  const res = await fetch("/v1/adapters/" + id + "/peft.zip", { headers: headers() });
  if (!res.ok) return status("download failed: " + res.status, true);
  const url = URL.createObjectURL(await res.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = "tagi-" + id + ".zip";
  a.click();
  URL.revokeObjectURL(url);
}

function snippets(id) {
  const base = location.origin;
  const auth = state.auth ? ' \\\n  -H "Authorization: Bearer $TAGI_SERVE_TOKEN"' : "";
  const input = ($("inputs").value.split("\n")[0] || "the cat sat").replace(/"/g, '\\"');
  const maxTokens = parseInt($("max-tokens").value, 10) || 32;
  $("curl-snippet").textContent =
    "curl -s " + base + "/v1/completions" + auth + ' \\\n  -H "Content-Type: application/json" \\\n' +
    "  -d '" + JSON.stringify({ model: id, prompt: input, max_tokens: maxTokens }).replace(/'/g, "'\\''") + "'";
  $("python-snippet").textContent =
    (state.auth ? "import os\n" : "") + "from openai import OpenAI\n\n" +
    'client = OpenAI(base_url="' + base + '/v1", api_key=' +
    (state.auth ? 'os.environ["TAGI_SERVE_TOKEN"]' : '"unused"') + ")\n" +
    'out = client.completions.create(model="' + id + '", prompt="' + input + '", max_tokens=' + maxTokens + ")\n" +
    "print(out.choices[0].text)";
}

function copy(ev) {
  const text = $(ev.target.dataset.copy).textContent;
  navigator.clipboard.writeText(text).then(() => status("copied"), () => status("copy failed", true));
}

window.addEventListener("DOMContentLoaded", async () => {
  $("make").addEventListener("click", makeAdapter);
  $("run").addEventListener("click", run);
  $("task").addEventListener("change", pickTask);
  $("download").addEventListener("click", download);
  $("token").addEventListener("change", loadTasks);
  document.querySelectorAll("button[data-copy]").forEach((b) => b.addEventListener("click", copy));
  try {
    await loadHealth();
    await loadTasks();
    status("ready");
  } catch (e) {
    status("cannot reach the server: " + e.message, true);
  }
});

// Renders /openapi.json as a list of endpoints and their request fields, without any outside script.
"use strict";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) return spec.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

function typeOf(prop) {
  if (prop.enum) return prop.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (prop.anyOf) return prop.anyOf.map(typeOf).join(" | ");
  return prop.type || "any";
}

function limits(prop) {
  const parts = [];
  for (const [key, sign] of [["minimum", ">="], ["exclusiveMinimum", ">"], ["maximum", "<="], ["exclusiveMaximum", "<"]]) {
    if (key in prop) parts.push(sign + " " + prop[key]);
  }
  for (const alt of prop.anyOf || []) parts.push(...limits(alt));
  return parts;
}

function fieldsTable(spec, schema) {
  const table = el("table", "fields");
  const head = el("tr");
  for (const h of ["field", "type", "default", "limits", "description"]) head.append(el("th", "", h));
  table.append(head);
  const required = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {});
  fields.sort((a, b) => Number(required.has(b[0])) - Number(required.has(a[0])));  // required first
  for (const [name, prop] of fields) {
    const row = el("tr");
    row.append(el("td", "", name + (required.has(name) ? " *" : "")));
    row.append(el("td", "", typeOf(prop)));
    row.append(el("td", "", "default" in prop ? JSON.stringify(prop.default) : ""));
    row.append(el("td", "", limits(prop).join(", ")));
    row.append(el("td", "", prop.description || ""));
    table.append(row);
  }
  return table;
}

async function main() {
  const box = document.getElementById("endpoints");
  let spec;
  try {
    spec = await (await fetch("/openapi.json")).json();
  } catch (err) {
    const error = document.getElementById("error");
    error.textContent = "could not load /openapi.json: " + err.message;
    error.hidden = false;
    return;
  }
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const section = el("section", "endpoint candidate");
      section.append(el("h2", "", method.toUpperCase() + " " + path));
      if (op.summary) section.append(el("p", "", op.summary));
      const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
      if (body) {
        const schema = resolve(spec, body.schema);
        section.append(fieldsTable(spec, schema));
        const example = {};
        for (const [name, prop] of Object.entries(schema.properties || {})) {
          if (prop.examples) example[name] = prop.examples[0];
        }
        section.append(el("pre", "", "curl -s -X " + method.toUpperCase() + " -H 'Content-Type: application/json' \\\n  -d '" +
          JSON.stringify(example) + "' " + location.origin + path));
      }
      box.append(section);
    }
  }
}

document.addEventListener("DOMContentLoaded", main);

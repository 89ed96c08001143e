// Builds countries.geojson, the map page's offline basemap, from two GeoJSON files made with
// topojson-client's topo2geo out of world-atlas@2 (Natural Earth 4.1.0, public domain). See
// ../README.md for the exact commands. Not embedded in the server; kept so the file can be
// remade.
//
// The world comes from the 1:110m file (small); the countries along the migration route through
// Mexico come from the 1:50m file, so the Río Bravo and the Sonoran border are drawn closely
// enough at the zoom levels coordinators use. Coordinates are rounded to 3 decimals (about
// 100 m), far finer than either scale, which keeps the file a few hundred KB.
//
// usage: node build-basemap.mjs countries-110m.geojson countries-50m.geojson > countries.geojson
import { readFileSync } from "node:fs";

const [small, medium] = process.argv.slice(2).map((file) => JSON.parse(readFileSync(file, "utf8")));
if (!small || !medium) {
  console.error("usage: node build-basemap.mjs countries-110m.geojson countries-50m.geojson");
  process.exit(2);
}

// ISO 3166 numeric codes (the features' ids): Mexico, the United States, and Central America
// and Cuba, where people on the route come from or pass through.
const DETAILED = new Set(["484", "840", "320", "084", "340", "222", "558", "188", "591", "192"]);

const round = (n) => Math.round(n * 1000) / 1000;
const ring = (points) => {
  const out = [];
  for (const [lon, lat] of points) {
    const p = [round(lon), round(lat)];
    const last = out[out.length - 1];
    if (!last || last[0] !== p[0] || last[1] !== p[1]) out.push(p);
  }
  return out.length >= 4 ? out : null;
};
const polygon = (rings) => rings.map(ring).filter(Boolean);

function simplify(feature) {
  const g = feature.geometry;
  if (!g) return null;
  let coordinates;
  if (g.type === "Polygon") coordinates = polygon(g.coordinates);
  else if (g.type === "MultiPolygon") coordinates = g.coordinates.map(polygon).filter((p) => p.length);
  else return null;
  if (!coordinates.length) return null;
  // Only the name is kept: the page labels nothing else.
  return {
    type: "Feature",
    id: feature.id,
    properties: { name: feature.properties.name },
    geometry: { type: g.type, coordinates },
  };
}

const features = [
  ...small.features.filter((f) => !DETAILED.has(f.id)),
  ...medium.features.filter((f) => DETAILED.has(f.id)),
]
  .map(simplify)
  .filter(Boolean)
  .sort((a, b) => String(a.id).localeCompare(String(b.id)));

process.stdout.write(
  JSON.stringify({
    type: "FeatureCollection",
    // Credit travels with the data.
    source: "Natural Earth 4.1.0 (public domain) via world-atlas 2.0.2; 1:50m for Mexico, the United States, Central America and Cuba, 1:110m elsewhere",
    features,
  }) + "\n",
);

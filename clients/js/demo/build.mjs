// Bundles the demo chat (and the client it uses) into the file the server embeds.
// `--check`: build in memory and fail if the embedded file is not what the sources give.
import { bundle } from '../scripts/bundle.mjs';

await bundle('demo');

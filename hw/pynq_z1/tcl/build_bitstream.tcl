# build_bitstream.tcl: the Vivado block design and bitstream of the CEPD overlay (static;
# settings come from project.tcl). Run after run_hls.tcl has exported the IP:
#
#   vivado -mode batch -source build_bitstream.tcl
#
# PS7 with the PYNQ-Z1 board preset; the engine's AXI-Lite control on M_AXI_GP0; its two m_axi
# bundles on S_AXI_HP0 / S_AXI_HP1 (64-bit); FCLK_CLK0 at the configured clock. Writes
# overlay/<name>.bit and overlay/<name>.hwh (same base name, as pynq.Overlay expects).
set here [file dirname [file normalize [info script]]]
source [file join $here project.tcl]

set proj_dir [file join $here ${project_name}_vivado]
set ip_repo [file join $here ${project_name}_hls solution1 impl ip]
set bd design_1
set engine ${top}_0

create_project ${project_name}_vivado $proj_dir -part $part -force
set_property board_part $board_part [current_project]
set_property ip_repo_paths [list $ip_repo] [current_project]
update_ip_catalog
create_bd_design $bd

set ps [create_bd_cell -type ip -vlnv xilinx.com:ip:processing_system7:5.5 processing_system7_0]
apply_bd_automation -rule xilinx.com:bd_rule:processing_system7 \
    -config {make_external "FIXED_IO, DDR" apply_board_preset "1" Master "Disable" Slave "Disable"} $ps
set ps_config [list CONFIG.PCW_USE_M_AXI_GP0 {1} CONFIG.PCW_FPGA0_PERIPHERAL_FREQMHZ $clock_mhz]
foreach {bundle hp} $hp_ports {
    lappend ps_config CONFIG.PCW_USE_${hp} {1} CONFIG.PCW_${hp}_DATA_WIDTH {64}
}
set_property -dict $ps_config $ps

create_bd_cell -type ip -vlnv ${ip_vendor}:hls:${top}:${ip_version} $engine
apply_bd_automation -rule xilinx.com:bd_rule:axi4 -config [list Clk_master {Auto} Clk_slave {Auto} \
    Clk_xbar {Auto} Master /processing_system7_0/M_AXI_GP0 Slave /$engine/s_axi_control \
    intc_ip {New AXI Interconnect} master_apm {0}] [get_bd_intf_pins $engine/s_axi_control]
foreach {bundle hp} $hp_ports {
    apply_bd_automation -rule xilinx.com:bd_rule:axi4 -config [list Clk_master {Auto} Clk_slave {Auto} \
        Clk_xbar {Auto} Master /$engine/m_axi_$bundle Slave /processing_system7_0/$hp \
        intc_ip {Auto} master_apm {0}] [get_bd_intf_pins processing_system7_0/$hp]
}
assign_bd_address
validate_bd_design
save_bd_design

set wrapper [make_wrapper -files [get_files ${bd}.bd] -top]
add_files -norecurse $wrapper
set_property top ${bd}_wrapper [current_fileset]
update_compile_order -fileset sources_1
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} {
    error "implementation did not complete; see $proj_dir"
}

set out [file join $here overlay]
file mkdir $out
file copy -force [lindex [glob [file join $proj_dir ${project_name}_vivado.runs impl_1 *.bit]] 0] \
    [file join $out ${project_name}.bit]
# Vivado 2020.2+ writes the hardware handoff under .gen, older versions under .srcs
set hwh [glob -nocomplain \
    [file join $proj_dir ${project_name}_vivado.gen sources_1 bd $bd hw_handoff ${bd}.hwh] \
    [file join $proj_dir ${project_name}_vivado.srcs sources_1 bd $bd hw_handoff ${bd}.hwh]]
if {[llength $hwh] == 0} {
    error "no .hwh found under $proj_dir"
}
file copy -force [lindex $hwh 0] [file join $out ${project_name}.hwh]
open_run impl_1
report_utilization -file [file join $out utilization.rpt]
report_timing_summary -file [file join $out timing.rpt]
puts "overlay written: [file join $out ${project_name}.bit] and .hwh"
